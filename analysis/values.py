"""Small value helpers shared by the service, the analyses and the report: percentages, rounding,
JSON-ready copies and markdown tables. Pure functions, no numpy arrays kept."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["json_ready", "md_table", "percent", "rounded"]


def percent(fraction: Any) -> float | None:
    """A fraction (``0.5``) as percent (``50.0``); None for None, NaN, infinity or a non-number."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        return None
    return 100.0 * f if math.isfinite(f) else None


def rounded(v: float | None, nd: int = 1) -> float | None:
    """``v`` rounded to ``nd`` decimals; None for None, NaN or infinity."""
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def json_ready(x: Any) -> Any:
    """A copy of ``x`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN / inf -> None, numpy
    scalars -> Python, tuples -> lists, keys -> str (recursively)."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; None cells show as "–", floats with one decimal."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
