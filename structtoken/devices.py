"""Device selection: CUDA when present (bf16 autocast), else the CPU."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU raises a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available here; use --device cpu or auto")
    return dev


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
