"""One error vocabulary: every refusal of the library is a :class:`StructTokenError`.

A message is meant for a person and for a log line: one line, at most :data:`MAX_MESSAGE` characters,
naming a file by its base name once, saying what is wrong and what to do. Anything taken from a file
(tensor names, config values, pickle globals) goes through :func:`clean` first, so a name holding a
newline cannot forge a log line and a 3 MB name cannot become a 3 MB message.

Subclasses stay :class:`ValueError` subclasses, so ``except ValueError`` in older callers still works.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MAX_MESSAGE", "StructTokenError", "base_name", "clean", "fmt", "names"]

MAX_MESSAGE = 300
"""Longest message a :class:`StructTokenError` carries (characters); longer ones are cut with an ellipsis."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")
_SPACES = re.compile(r"\s+")


def clean(text: object, limit: int = 48) -> str:
    """``text`` as one printable line of at most ``limit`` characters: control characters (newlines, escapes,
    bidi overrides) become ``?``, runs of blanks one space, and a long text keeps its start and end
    around an ellipsis (``backbone.blocks.0.at…qkv.weight``)."""
    s = _CONTROL.sub("?", str(text))
    s = _SPACES.sub(" ", s).strip()
    if len(s) > limit:
        head = (limit - 1) * 2 // 3
        s = s[:head] + "…" + s[len(s) - (limit - 1 - head) :]
    return s


def names(items: Iterable[object], total: int | None = None, show: int = 3, limit: int = 40) -> str:
    """At most ``show`` cleaned names, comma separated, and ``(+N more)`` for the rest."""
    items = list(items)
    total = len(items) if total is None else total
    shown = ", ".join(clean(i, limit) for i in items[:show])
    return shown + (f" (+{total - min(show, len(items))} more)" if total > show else "")


def base_name(path: str | os.PathLike[str] | None) -> str:
    """A file's base name, cleaned (never its folder, which may be a server's upload area)."""
    if path is None:
        return "the file"
    return clean(Path(os.fspath(path)).name or str(path), 60) or "the file"


def fmt(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` as one line of at most ``limit`` characters."""
    return clean(_SPACES.sub(" ", message), limit)


class StructTokenError(ValueError):
    """Base of the library's refusals; the message is one cleaned line of at most ``limit`` characters."""

    limit = MAX_MESSAGE

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(fmt(str(message), self.limit), *args)
