"""Progress reporting: the callback protocol long library operations accept.

Library functions that take a while (RDB export and import, projection)
accept an optional callback ``progress(stage, done, total)``: `stage` names
the phase (``"read"``, ``"import"``, ``"export"``), `done` counts the units
finished so far and `total` is the number expected, or None if unknown.
What is shown, if anything, is the caller's affair: the command line's
terminal line is :class:`telstate_log.cli._progress_bar.Progress`.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressCallback"]


class ProgressCallback(Protocol):
    """``progress(stage, done, total)``: `done` of `total` units of `stage` finished."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...
