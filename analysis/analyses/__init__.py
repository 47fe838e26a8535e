"""The analyses the service runs and the app offers, in display order.

Adding an analysis: one module here with an :class:`~analysis.analyses.base.Analysis` subclass, and
one line in :data:`ANALYSES`.
"""

from __future__ import annotations

from .attention import ATTENTION
from .base import Analysis, View, ViewRequest
from .comparison import COMPARISON
from .focus import FOCUS
from .prediction import PREDICTION
from .probe import PROBE

ANALYSES: dict[str, Analysis] = {
    PREDICTION.name: PREDICTION,
    COMPARISON.name: COMPARISON,
    FOCUS.name: FOCUS,
    PROBE.name: PROBE,
    ATTENTION.name: ATTENTION,
}
"""Analysis name -> analysis, in display order."""

__all__ = ["ANALYSES", "Analysis", "View", "ViewRequest"]
