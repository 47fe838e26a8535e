"""An independent, functional re-implementation of the official StructToken forward pass.

Written from the conventions in ``../shared/reference/README.md`` directly on the *official* state
dict keys (``backbone.layers.{i}.attn.attn.in_proj_weight`` ...), using
``torch.nn.functional.multi_head_attention_forward`` as mmcv does. It is validated against the
reference fixtures in the tests and then serves as the oracle for configurations the fixtures do
not cover (other widths, depths, class counts, grids, padding, sliding windows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _ln2d(x, sd, p, eps):
    b, c, h, w = x.shape
    return _ln(x.flatten(2).transpose(1, 2), sd, p, eps).transpose(1, 2).reshape(b, c, h, w)


def _conv(x, sd, p, **kw):
    return F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], **kw)


def backbone(sd, x, img_size, num_heads):
    b, _, h0, w0 = x.shape
    x = F.pad(x, (0, (16 - w0 % 16) % 16, 0, (16 - h0 % 16) % 16))
    x = _conv(x, sd, "backbone.patch_embed.projection", stride=16)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["backbone.cls_token"].expand(b, -1, -1), x], dim=1)
    pos = sd["backbone.pos_embed"]
    if pos.shape[1] != x.shape[1]:
        g = (img_size[0] // 16, img_size[1] // 16)
        grid = pos[:, 1:].reshape(1, g[0], g[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    x = x + pos
    c = x.shape[-1]
    i = 0
    while f"backbone.layers.{i}.ln1.weight" in sd:
        p = f"backbone.layers.{i}"
        q = _ln(x, sd, p + ".ln1", 1e-6).transpose(0, 1)
        a, _ = F.multi_head_attention_forward(
            q,
            q,
            q,
            c,
            num_heads,
            sd[p + ".attn.attn.in_proj_weight"],
            sd[p + ".attn.attn.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            sd[p + ".attn.attn.out_proj.weight"],
            sd[p + ".attn.attn.out_proj.bias"],
            training=False,
            need_weights=True,
        )
        x = x + a.transpose(0, 1)
        y = F.gelu(
            F.linear(_ln(x, sd, p + ".ln2", 1e-6), sd[p + ".ffn.layers.0.0.weight"], sd[p + ".ffn.layers.0.0.bias"])
        )
        x = x + F.linear(y, sd[p + ".ffn.layers.1.weight"], sd[p + ".ffn.layers.1.bias"])
        i += 1
    return x[:, 1:].transpose(1, 2).reshape(b, c, h, w)


def _dw(x, sd, p):
    x = F.gelu(_ln2d(_conv(x, sd, p + ".conv1"), sd, p + ".norm1", 1e-6))
    x = F.gelu(_ln2d(_conv(x, sd, p + ".conv2", padding=1, groups=x.shape[1]), sd, p + ".norm2", 1e-6))
    return _ln2d(_conv(x, sd, p + ".conv3"), sd, p + ".norm3", 1e-6)


def _ffn(x, sd, p):
    c = x.shape[1]
    y = F.gelu(_ln2d(_conv(x, sd, p + ".pwconv1"), sd, p + ".norm1", 1e-5))
    y = F.gelu(_ln2d(_conv(y, sd, p + ".dwconv", padding=1, groups=c), sd, p + ".norm2", 1e-5))
    y = _ln2d(_conv(y, sd, p + ".pwconv2"), sd, p + ".norm3", 1e-5)
    return F.gelu(x + y)


def _attn(q_in, kv, sd, p):
    b, c, h, w = q_in.shape
    q = _dw(q_in, sd, p + ".query_map").flatten(2)
    k = _dw(kv, sd, p + ".key_map").flatten(2)
    v = _dw(kv, sd, p + ".value_map").flatten(2)
    a = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)
    return q_in + _dw((a @ v).reshape(b, c, h, w), sd, p + ".out_project")


def head(sd, feats, kind):
    """Returns (kernels_init, [(kernels, features) per block], head_out)."""
    b, _, h, w = feats.shape
    feats = _conv(feats, sd, "decode_head.dec_proj")
    kern = sd["decode_head.kernels"]
    gh, gw = kern.shape[-2:]
    if (h, w) != (gh, gw):
        kern = F.interpolate(kern, size=(h, w), mode="bicubic", align_corners=gh % 2 != 0 or gw % 2 != 0)
    kern = kern.expand(b, -1, -1, -1)
    k0, blocks, i = kern, [], 0
    kk = kern.shape[1]
    while any(key.startswith(f"decode_head.layers.{i}.") for key in sd):
        p = f"decode_head.layers.{i}"
        if kind == "cse":
            kern = _ffn(_attn(kern, feats, sd, p + ".cross_attn"), sd, p + ".ffn1")
            if f"{p}.ffn2.pwconv1.weight" in sd:
                feats = _ffn(feats, sd, p + ".ffn2")
        else:
            x = torch.cat([kern, feats], 1)
            if kind == "sse":
                x = _attn(x, x, sd, p + ".cross_attn")
            else:
                x = x + _dw(
                    _conv(_dw(x, sd, p + ".attn.query_map"), sd, p + ".attn.attn_pw_conv"),
                    sd,
                    p + ".attn.out_project",
                )
            x = _ffn(x, sd, p + ".ffn1")
            kern, feats = x[:, :kk], x[:, kk:]
        blocks.append((kern, feats))
        i += 1
    r = "decode_head.residual_block"
    y = _conv(F.gelu(_ln2d(kern, sd, r + ".norm1", 1e-6)), sd, r + ".conv1", padding=1)
    y = _conv(F.gelu(_ln2d(y, sd, r + ".norm2", 1e-6)), sd, r + ".conv2", padding=1)
    return k0, blocks, y + kern


def encode_decode(sd, x, kind, img_size, num_heads):
    out = head(sd, backbone(sd, x, img_size, num_heads), kind)[2]
    return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def random_official_state_dict(kind, embed_dim, depth, num_classes, grid, blocks, seed=0):
    """Random weights under the official key names, drawn like the fixtures (scaled to keep softmaxes peaked)."""
    g = torch.Generator().manual_seed(seed)
    c, k = embed_dim, num_classes
    shapes = {
        "backbone.cls_token": (1, 1, c),
        "backbone.pos_embed": (1, 1 + (grid[0] * grid[1]), c),
        "backbone.patch_embed.projection.weight": (c, 3, 16, 16),
        "backbone.patch_embed.projection.bias": (c,),
    }
    for i in range(depth):
        p = f"backbone.layers.{i}"
        shapes.update(
            {
                f"{p}.ln1.weight": (c,),
                f"{p}.ln1.bias": (c,),
                f"{p}.attn.attn.in_proj_weight": (3 * c, c),
                f"{p}.attn.attn.in_proj_bias": (3 * c,),
                f"{p}.attn.attn.out_proj.weight": (c, c),
                f"{p}.attn.attn.out_proj.bias": (c,),
                f"{p}.ln2.weight": (c,),
                f"{p}.ln2.bias": (c,),
                f"{p}.ffn.layers.0.0.weight": (4 * c, c),
                f"{p}.ffn.layers.0.0.bias": (4 * c,),
                f"{p}.ffn.layers.1.weight": (c, 4 * c),
                f"{p}.ffn.layers.1.bias": (c,),
            }
        )

    def dw(p, cin, cout):
        for j, (o, i_, kk) in enumerate([(cin, cin, 1), (cin, 1, 3), (cout, cin, 1)], 1):
            shapes[f"{p}.conv{j}.weight"] = (o, i_, kk, kk)
            shapes[f"{p}.conv{j}.bias"] = (o,)
            shapes[f"{p}.norm{j}.weight"] = (o,)
            shapes[f"{p}.norm{j}.bias"] = (o,)

    def ffn(p, ch):
        shapes.update(
            {
                f"{p}.pwconv1.weight": (4 * ch, ch, 1, 1),
                f"{p}.pwconv1.bias": (4 * ch,),
                f"{p}.norm1.weight": (4 * ch,),
                f"{p}.norm1.bias": (4 * ch,),
                f"{p}.dwconv.weight": (4 * ch, 4, 3, 3),
                f"{p}.dwconv.bias": (4 * ch,),
                f"{p}.norm2.weight": (4 * ch,),
                f"{p}.norm2.bias": (4 * ch,),
                f"{p}.pwconv2.weight": (ch, 4 * ch, 1, 1),
                f"{p}.pwconv2.bias": (ch,),
                f"{p}.norm3.weight": (ch,),
                f"{p}.norm3.bias": (ch,),
            }
        )

    shapes["decode_head.kernels"] = (1, k, *grid)
    for i in range(blocks):
        p = f"decode_head.layers.{i}"
        if kind == "cse":
            for name, ch in (("query_map", k), ("key_map", c), ("value_map", c), ("out_project", k)):
                dw(f"{p}.cross_attn.{name}", ch, ch)
            ffn(f"{p}.ffn1", k)
            if i < blocks - 1:
                ffn(f"{p}.ffn2", c)
        elif kind == "sse":
            for name in ("query_map", "key_map", "value_map", "out_project"):
                dw(f"{p}.cross_attn.{name}", k + c, k + c)
            ffn(f"{p}.ffn1", k + c)
        else:
            dw(f"{p}.attn.query_map", k + c, k + c)
            dw(f"{p}.attn.out_project", k + c, k + c)
            shapes[f"{p}.attn.attn_pw_conv.weight"] = (k + c, k + c, 1, 1)
            shapes[f"{p}.attn.attn_pw_conv.bias"] = (k + c,)
            ffn(f"{p}.ffn1", k + c)
    shapes.update({"decode_head.dec_proj.weight": (c, c, 1, 1), "decode_head.dec_proj.bias": (c,)})
    for j in (1, 2):
        shapes.update(
            {
                f"decode_head.residual_block.norm{j}.weight": (k,),
                f"decode_head.residual_block.norm{j}.bias": (k,),
                f"decode_head.residual_block.conv{j}.weight": (k, k, 3, 3),
                f"decode_head.residual_block.conv{j}.bias": (k,),
            }
        )
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("kernels"):
            t = torch.randn(shape, generator=g)
        elif key in ("backbone.cls_token", "backbone.pos_embed"):
            t = 0.2 * torch.randn(shape, generator=g)
        elif "norm" in key or ".ln" in key:
            t = (1.0 if key.endswith("weight") else 0.0) + (0.1 if key.endswith("weight") else 0.05) * torch.randn(
                shape, generator=g
            )
        elif key.endswith("bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = c if "in_proj" in key else int(torch.tensor(shape[1:]).prod())
            t = torch.randn(shape, generator=g) / fan_in**0.5
        sd[key] = t
    return sd
