"""Progress lines on a terminal for long command-line operations.

Theory of operation
-------------------
:class:`Progress` is a :class:`~telstate_log.core._progress.ProgressCallback`
for the command line.  It writes one
line to a text stream, rewriting it in place with ``\\r``:

* only when the stream is a terminal (``isatty()``), so redirected output
  and logs stay clean -- otherwise every call returns at once;
* at most once per `interval` seconds (10 times a second by default), plus
  the first call of each stage, so a tight loop reporting every item costs
  one clock read per call;
* the line shows the count, the percentage when the total is known, and the
  rate since the stage started (``12.3k/s``), once it has run long enough
  for the rate to mean something;
* :meth:`Progress.close` (or leaving the ``with`` block) erases the line, so
  the summary printed afterwards starts on a clean line.

No dependencies beyond the standard library.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_MIN_RATE_SECONDS = 0.5       # show a rate only after this long in a stage


def _short_number(value: float) -> str:
    """``1234567.0`` -> ``"1.2M"``: three significant figures at most."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


class Progress:
    """A rate-limited, terminal-only progress line (see the module docstring).

    Parameters
    ----------
    stream
        Where to write (default: ``sys.stderr`` at construction time).
    interval
        Minimum seconds between two updates of the line.
    enabled
        Force the line on or off; by default it is on if `stream` is a
        terminal.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.1,
                 enabled: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)
            enabled = bool(isatty()) if isatty is not None else False
        self.enabled = enabled
        self._next = 0.0
        self._stage = ""
        self._stage_started = 0.0
        self._width = 0          # length of the line on screen, for erasing it

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next and stage == self._stage:
            return
        if stage != self._stage:
            self._stage = stage
            self._stage_started = now
        self._next = now + self._interval
        if total:
            text = f"{stage}: {done:,}/{total:,} ({100.0 * done / total:.0f}%)"
        else:
            text = f"{stage}: {done:,}"
        elapsed = now - self._stage_started
        if elapsed >= _MIN_RATE_SECONDS:
            text += f" {_short_number(done / elapsed)}/s"
        self._write(text)

    def _write(self, text: str) -> None:
        pad = " " * max(0, self._width - len(text))
        self._stream.write("\r" + text + pad)
        self._stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """Erase the progress line (if one was shown)."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
