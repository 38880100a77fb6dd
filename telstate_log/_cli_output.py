"""Output of the command line: aligned tables, JSON, values and times as text.

Theory of operation
-------------------
Every command prints either for people or, with ``--json``, for programs:

* **People** get aligned columns (:class:`Table`) or ``label  value`` blocks
  (:func:`print_fields`).  A table is printed in batches so that a long
  listing starts at once and ``tail -f`` can show each event as it arrives:
  column widths are fixed by the first batch and only ever grow.  The last
  column (normally the value) is never padded or cut.  Values are shown with
  :func:`repr` (so ``'1'`` and ``1`` differ) on one line; times as ISO 8601
  in UTC with a ``Z``.
* **Programs** get one JSON document per command (an object, so fields can
  be added without breaking readers), or JSON Lines for an endless stream
  (``tail -f``).  :func:`to_json` maps decoded telstate values onto JSON:
  tuples and numpy arrays become lists, numpy scalars plain numbers,
  complex numbers ``{"real", "imag"}``, bytes ``{"hex"}``, non-finite floats
  the strings ``"nan"``, ``"inf"`` and ``"-inf"``, dictionary keys that are
  not strings their ``repr``, and anything else its ``repr``.  Every time is
  given twice: the float (UNIX seconds, exact) and a ``*_utc`` ISO string.

Output goes to ``sys.stdout`` as it is at the time of the call, so callers
(and tests) may redirect it.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import sys
from collections.abc import Container, Iterable, Sequence
from typing import Any, TextIO

import numpy as np

__all__ = [
    "Table",
    "emit_json",
    "emit_json_line",
    "emit_json_list",
    "format_bytes",
    "iso_utc",
    "plural",
    "print_fields",
    "safe_text",
    "to_json",
    "value_text",
]

_NEWLINES = re.compile(r"\s*\n\s*")


def iso_utc(t: float | None, timespec: str = "milliseconds") -> str | None:
    """UNIX time `t` as ISO 8601 in UTC (``...Z``); None stays None.

    Times that no datetime can hold (out of range, non-finite) come back as
    their float text rather than raising.
    """
    if t is None:
        return None
    try:
        dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(t)
    return dt.isoformat(timespec=timespec).replace("+00:00", "Z")


def format_bytes(n: int) -> str:
    """A byte count for people: ``"1.2 MiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def plural(n: int, word: str) -> str:
    """``"1 file"``, ``"2 files"``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def safe_text(s: str) -> str:
    """`s` printable on any UTF-8 stream: undecodable bytes (surrogates) as ``\\xNN``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def value_text(value: Any) -> str:
    """A decoded value for a table cell: its repr, on one line."""
    return safe_text(_NEWLINES.sub(" ", repr(value)))


def to_json(value: Any) -> Any:
    """`value` as plain JSON data (see the module docstring for the mapping)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, complex):
        return {"real": to_json(value.real), "imag": to_json(value.imag)}
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): to_json(v) for k, v in value.items()}
    return repr(value)


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)


def emit_json(obj: Any, out: TextIO | None = None) -> None:
    """Print one JSON document (indented)."""
    out = out or sys.stdout
    out.write(safe_text(_dumps(obj, indent=2)) + "\n")
    out.flush()


def emit_json_line(obj: Any, out: TextIO | None = None) -> None:
    """Print one JSON Lines record (compact, one line)."""
    out = out or sys.stdout
    out.write(safe_text(_dumps(obj)) + "\n")


def emit_json_list(head: dict[str, Any], name: str, items: Iterable[Any],
                   out: TextIO | None = None) -> int:
    """Print ``{**head, name: [items...]}`` streaming the items; returns their count.

    The list may be long (an audit trail): items are written as they come,
    never collected.
    """
    out = out or sys.stdout
    out.write("{\n")
    for key, value in head.items():
        out.write(f"  {_dumps(key)}: {safe_text(_dumps(value))},\n")
    out.write(f"  {_dumps(name)}: [")
    count = 0
    for item in items:
        out.write(("\n    " if count == 0 else ",\n    ") + safe_text(_dumps(item)))
        count += 1
    out.write("\n  ]\n}\n" if count else "]\n}\n")
    out.flush()
    return count


def print_fields(fields: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    """Print ``label  value`` lines with the values aligned."""
    out = out or sys.stdout
    width = max((len(label) for label, _ in fields), default=0)
    for label, text in fields:
        out.write(f"{label:<{width}}  {text}".rstrip() + "\n")


class Table:
    """Aligned columns, printed in batches as rows arrive (see the module docstring).

    Parameters
    ----------
    headers
        Column titles (printed once, before the first row; an empty table
        prints nothing at all).
    right
        Indexes of columns to right-align (numbers).
    out
        Stream (default: ``sys.stdout`` at construction).
    batch
        Rows collected before the first print, to choose the widths.
    """

    def __init__(self, headers: Sequence[str], *, right: Container[int] = (),
                 out: TextIO | None = None, batch: int = 256) -> None:
        self._headers = [str(h) for h in headers]
        self._right = right
        self._out = out or sys.stdout
        self._batch = batch
        self._widths = [len(h) for h in self._headers]
        self._rows: list[Sequence[str]] = []
        self._started = False
        self.rows = 0

    def add(self, *cells: str) -> None:
        """Queue a row (printed when the batch is full, or on :meth:`flush`)."""
        if len(cells) != len(self._headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self._headers)}")
        self._rows.append(cells)
        self.rows += 1
        if len(self._rows) >= self._batch:
            self.flush()

    def flush(self) -> None:
        """Print the queued rows now."""
        if not self._rows:
            return
        last = len(self._widths) - 1
        for row in self._rows:
            for i, cell in enumerate(row[:last]):
                if len(cell) > self._widths[i]:
                    self._widths[i] = len(cell)
        lines = [] if self._started else [self._line(self._headers)]
        self._started = True
        lines.extend(self._line(row) for row in self._rows)
        self._rows = []
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()

    def _line(self, cells: Sequence[str]) -> str:
        last = len(cells) - 1
        parts = []
        for i, cell in enumerate(cells):
            if i == last:
                parts.append(cell)
            elif i in self._right:
                parts.append(cell.rjust(self._widths[i]))
            else:
                parts.append(cell.ljust(self._widths[i]))
        return "  ".join(parts).rstrip()
