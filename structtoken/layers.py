"""Building blocks shared by the StructToken heads, the per-pixel baseline and the FCN head.

Reproduces the modules of the official StructToken code (Lin et al., "StructToken: Rethinking
Semantic Segmentation with Structural Prior", arXiv 2203.12612; RockeyCoss/StructToken on
mmseg 0.20.2) with the numerical conventions listed in ``../shared/reference/README.md``:

* every norm is a LayerNorm over the channel axis of an NCHW map, computed on a [B, HW, C] view
  and written back as a *contiguous* NCHW tensor (the memory layout changes the CPU results);
* GELU is the exact erf form everywhere;
* eps is 1e-6 in :class:`DepthWiseConvBlock` and :class:`PreActResidualBlock`, and 1e-5 in
  :class:`GroupConvBlock` (the official head config gives ``dict(type='LN')`` without eps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map; returns a contiguous [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = super().forward(x.flatten(2).transpose(1, 2))  # [B, HW, C]
        return y.transpose(1, 2).reshape(b, c, h, w)


class DepthWiseConvBlock(nn.Module):
    """1x1 conv, LN, GELU, 3x3 depthwise conv, LN, GELU, 1x1 conv to ``out_channels``, LN.

    No residual and no final activation. [B, Cin, H, W] -> [B, Cout, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 1)
        self.norm1 = ChannelLayerNorm(in_channels, eps=eps)
        self.conv2 = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.norm2 = ChannelLayerNorm(in_channels, eps=eps)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)
        self.norm3 = ChannelLayerNorm(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(x)))
        x = F.gelu(self.norm2(self.conv2(x)))
        return self.norm3(self.conv3(x))


class GroupConvBlock(nn.Module):
    """The FFN of a StructToken block: ``GELU(x + DropPath(y))`` with
    y = 1x1 conv C->rC, LN, GELU, 3x3 conv rC->rC in C groups (r channels each), LN, GELU, 1x1 conv rC->C, LN.

    [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, channels: int, expand_ratio: int = 4, drop_path: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = channels * expand_ratio
        self.pwconv1 = nn.Conv2d(channels, hidden, 1)
        self.norm1 = ChannelLayerNorm(hidden, eps=eps)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=channels)
        self.norm2 = ChannelLayerNorm(hidden, eps=eps)
        self.pwconv2 = nn.Conv2d(hidden, channels, 1)
        self.norm3 = ChannelLayerNorm(channels, eps=eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.pwconv1(x)))
        y = F.gelu(self.norm2(self.dwconv(y)))
        y = self.norm3(self.pwconv2(y))
        return F.gelu(x + self.drop_path(y))


class ChannelAttention(nn.Module):
    """Single-head attention between *channels* (slices) of spatial maps, as in CSE and SSE.

    q = query_map(query) [B, Cq, hw]; k, v = key_map(key), value_map(value) [B, Ckv, hw];
    A = softmax(q k^T / sqrt(h*w)) [B, Cq, Ckv]; output = query + DropPath(out_project(A v)).
    The scale uses the spatial size of the current input, as the official code does.
    """

    def __init__(self, query_channels: int, kv_channels: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.query_map = DepthWiseConvBlock(query_channels, query_channels)
        self.key_map = DepthWiseConvBlock(kv_channels, kv_channels)
        self.value_map = DepthWiseConvBlock(kv_channels, kv_channels)
        self.out_project = DepthWiseConvBlock(query_channels, query_channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The attention logits before the softmax: q k^T / sqrt(h*w), query [B, Cq, h, w], key [B, Ckv, h, w]
        -> [B, Cq, Ckv] (what :meth:`forward` takes the softmax of, computed the same way)."""
        h, w = query.shape[-2:]
        q = self.query_map(query).flatten(2)  # [B, Cq, hw]
        k = self.key_map(key).flatten(2)  # [B, Ckv, hw]
        return (q @ k.transpose(-2, -1)) * (h * w) ** -0.5

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, Cq, h, w], key/value [B, Ckv, h, w] -> (output [B, Cq, h, w], attention [B, Cq, Ckv])."""
        b, cq, h, w = query.shape
        v = self.value_map(value).flatten(2)  # [B, Ckv, hw]
        attn = self.scores(query, key).softmax(dim=-1)  # [B, Cq, Ckv]
        o = (attn @ v).reshape(b, cq, h, w)
        return query + self.drop_path(self.out_project(o)), attn


class PointWiseAttention(nn.Module):
    """PWE's replacement of attention: output = x + DropPath(out_project(conv1x1(query_map(x)))). [B, C, h, w]."""

    def __init__(self, channels: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.query_map = DepthWiseConvBlock(channels, channels)
        self.pw_conv = nn.Conv2d(channels, channels, 1)
        self.out_project = DepthWiseConvBlock(channels, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.out_project(self.pw_conv(self.query_map(x))))


class PreActResidualBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, "Identity Mappings"), K -> K channels:
    y = conv2(GELU(LN2(conv1(GELU(LN1(x)))))), both 3x3; output = x + y. [B, K, H, W]."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, eps=eps)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm(channels, eps=eps)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.gelu(self.norm1(x)))
        y = self.conv2(F.gelu(self.norm2(y)))
        return y + x


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, as mmseg's ``ConvModule`` in ``FCNHead``. [B, Cin, H, W] ->
    [B, Cout, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def drop_path_rates(rate: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over ``n`` blocks (as the official heads)."""
    if n <= 1:
        return [0.0] * n
    return [rate * i / (n - 1) for i in range(n)]
