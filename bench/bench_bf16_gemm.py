"""Can bf16 matrix units (AMX / AVX512-BF16) speed up the fp32 model within the fixtures' tolerance?

    python bench/bench_bf16_gemm.py [--threads 2] [--repeats 15]

For the backbone's linear-layer shapes at 512x512 ([1024 tokens, in] x [out, in]^T, ViT-T and ViT-B)
it prints GFLOP/s (2*M*K*N / median seconds) and the error relative to a float64 reference
(max |y - ref| / max |ref|) of:

    fp32    F.linear in fp32 (what the model runs today)
    bf32    F.linear in fp32 with oneDNN's bf16 math mode (torch.backends.mkldnn.matmul.fp32_precision
            = "bf16"): fp32 in and out, one bf16 pass inside
    split   split bf16: x = xh + xl, w = wh + wl (bf16 parts); xh @ wh in the bf16 math mode (its
            inputs are exact in bf16, so only fp32 accumulation rounds; fp32 out) plus the two
            corrections [xh | xl] @ [wl ; wh] in plain bf16 (bf16 out, but they are ~2^-8 of the result)
    bf16    one plain bf16 pass with bf16 output (the speed of the units; its accuracy is bf16's)

The fixtures' tolerance is about 1e-4 of the logits' scale; fp32 is ~5e-7 here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from bench_model import alternate  # the bench directory is on sys.path when run as a script

SHAPES = [  # (M tokens, K in, N out): qkv / fc1 / fc2 of ViT-T and ViT-B at 512x512 (32x32 tokens)
    ("vit-t qkv", 1024, 192, 576),
    ("vit-t fc1", 1024, 192, 768),
    ("vit-t fc2", 1024, 768, 192),
    ("vit-b qkv", 1024, 768, 2304),
    ("vit-b fc1", 1024, 768, 3072),
    ("vit-b fc2", 1024, 3072, 768),
]


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up (bench_model's timer)."""
    return alternate({"f": fn}, repeats)["f"]


@contextmanager
def bf16_math() -> Iterator[None]:
    """oneDNN's bf16 math mode for fp32 matmuls inside the block; the previous setting restored after."""
    mk = torch.backends.mkldnn.matmul
    before = mk.fp32_precision
    mk.fp32_precision = "bf16"
    try:
        yield
    finally:
        mk.fp32_precision = before


def row(name: str, m: int, k: int, n: int, repeats: int, g: torch.Generator) -> str:
    """One table row: x [m, k] @ w [n, k]^T + bias [n] timed and checked in the four variants."""
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * k**-0.5
    bias = torch.randn(n, generator=g)
    ref = F.linear(x.double(), w.double(), bias.double())
    wh = w.bfloat16()
    whf, wcat = wh.float(), torch.cat([(w - wh.float()).bfloat16(), wh], 1)
    xb = x.bfloat16()

    def fp32() -> torch.Tensor:
        return F.linear(x, w, bias)

    def bf32() -> torch.Tensor:
        with bf16_math():
            return F.linear(x, w, bias)

    def split() -> torch.Tensor:
        xh = x.bfloat16()
        xl = (x - xh.float()).bfloat16()
        with bf16_math():
            main_term = F.linear(xh.float(), whf, bias)
        return main_term + F.linear(torch.cat([xh, xl], 1), wcat).float()

    def err(y: torch.Tensor) -> float:
        return ((y.double() - ref).abs().max() / ref.abs().max()).item()

    flop = 2 * m * k * n / 1e9
    t = {f.__name__: median_s(f, repeats) for f in (fp32, bf32, split)}
    t["bf16"] = median_s(lambda: F.linear(xb, wh), repeats)
    return (
        f"| {name} | {m} {k} {n} | {flop / t['fp32']:.0f} | {flop / t['bf32']:.0f} | {flop / t['split']:.0f} "
        f"| {flop / t['bf16']:.0f} | {err(fp32()):.1e} | {err(bf32()):.1e} | {err(split()):.1e} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"amx tiles {torch.cpu._is_amx_tile_supported()}, avx512-bf16 {torch.cpu._is_avx512_bf16_supported()}"
    )
    print("| shape | M K N | fp32 GF/s | bf32 GF/s | split GF/s | bf16 GF/s | err fp32 | err bf32 | err split |")
    print("|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for name, m, k, n in SHAPES:
        print(row(name, m, k, n, args.repeats, g), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
