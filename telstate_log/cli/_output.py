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
  (``tail -f``).  Every time is given twice: the float (UNIX seconds, exact)
  and a ``*_utc`` ISO string.

Values in JSON
--------------
:func:`to_json` maps a decoded telstate value onto JSON so that the mapping
can be undone exactly: no two values share a JSON form.  ``None``, booleans,
integers, finite floats, strings and lists are JSON's own (a float keeps
its ``.0``).  A dict whose keys are all strings, none of them ``"$type"``,
is a JSON object.  Everything else is a *tagged object*: an object with a
``"$type"`` member, which no plain dict ever has:

=========================================  ==================================
value                                      JSON
=========================================  ==================================
``nan``, ``inf``, ``-inf``                 ``{"$type": "float", "value": "nan"}``
bytes                                      ``{"$type": "bytes", "hex": "00ff"}``
tuple                                      ``{"$type": "tuple", "items": [...]}``
complex                                    ``{"$type": "complex", "real": R, "imag": I}``
dict with a non-string or ``"$type"`` key  ``{"$type": "dict", "items": [[K, V], ...]}``
numpy array                                ``{"$type": "ndarray", "dtype": D, "shape": [...],
                                           "data": [...]}``
numpy scalar                               ``{"$type": "numpy", "dtype": D, "value": V}``
anything else (a pickled object)           ``{"$type": "object", "class": C, "repr": R}``
=========================================  ==================================

Members are mapped the same way, recursively (``R`` and ``I`` are floats,
``K`` and ``V`` any values).  ``D`` is the dtype as in a ``.npy`` header
(:func:`numpy.lib.format.dtype_to_descr`: ``"<f8"``, or a list of
``[name, type]`` pairs for a structured dtype).  An array's ``data`` is its
``tolist()`` with the elements mapped as values -- except datetime64
elements, which are ISO strings (``"NaT"`` included), and timedelta64
ones, which are integer counts of the dtype's unit (``NaT`` the smallest
int64) -- and a scalar's
``value`` is the element of a 0-d array.  Only ``"object"`` cannot be undone.

Output goes to ``sys.stdout`` as it is at the time of the call, so callers
(and tests) may redirect it.

Values for people
-----------------
:func:`value_repr` is a value's repr with numpy arrays written at numpy's
speed: numpy's own repr takes time that grows faster than the array (10 s
for 100,000 floats), so arrays longer than numpy's summarising threshold
(1000 elements) are laid out here from ``astype(str)`` exactly as numpy
lays them out (75 columns, ``dtype=`` unless the default), except that
floats are written in their shortest exact form where numpy's repr rounds
them to 8 digits.  Asked for a summary, it is numpy's summarised repr --
first and last elements, shape and dtype.
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
    "format_array",
    "format_bytes",
    "has_large_array",
    "iso_utc",
    "plural",
    "print_fields",
    "safe_text",
    "to_json",
    "value_repr",
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


#: The member that marks a tagged object (see the module docstring).
TAG = "$type"
#: Arrays with more elements than this are summarised by numpy's repr (its
#: default ``threshold``) and laid out by :func:`format_array` in full.
SUMMARY_THRESHOLD = 1000
_LINE_WIDTH = 75  # numpy's default


def to_json(value: Any) -> Any:
    """`value` as plain JSON data, reversibly (see the module docstring)."""
    if isinstance(value, np.generic):  # before str and float: np.str_, np.float64 are those
        return {TAG: "numpy", "dtype": _descr(value.dtype),
                "value": _array_data(np.asarray(value))}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {TAG: "float", "value": "nan" if math.isnan(value) else
                ("inf" if value > 0 else "-inf")}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if TAG not in value and all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [to_json(v) for v in value]}
    if isinstance(value, complex):
        return {TAG: "complex", "real": to_json(value.real), "imag": to_json(value.imag)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "hex": bytes(value).hex()}
    if isinstance(value, np.ndarray):
        return {TAG: "ndarray", "dtype": _descr(value.dtype), "shape": list(value.shape),
                "data": _array_data(value)}
    cls = type(value)
    return {TAG: "object", "class": f"{cls.__module__}.{cls.__qualname__}",
            "repr": repr(value)}


def _descr(dtype: np.dtype[Any]) -> Any:
    """`dtype` as in a ``.npy`` header, with JSON lists for its tuples."""
    def lists(d: Any) -> Any:
        return [lists(x) for x in d] if isinstance(d, (list, tuple)) else d

    return lists(np.lib.format.dtype_to_descr(dtype))


def _array_data(array: np.ndarray[Any, Any]) -> Any:
    """The elements of `array` as nested JSON lists (a 0-d array: its element)."""
    kind = array.dtype.kind
    if kind in "biu" or (kind == "f" and bool(np.isfinite(array).all())):
        return array.tolist()  # plain JSON numbers: no per-element work
    if kind == "M":
        return array.astype(str).tolist()
    if kind == "m":
        return array.view(np.int64).tolist()

    def mapped(item: Any, depth: int) -> Any:
        return to_json(item) if depth == 0 else [mapped(x, depth - 1) for x in item]

    return mapped(array.tolist(), array.ndim)


def value_repr(value: Any, summary: bool = False) -> str:
    """`value`'s repr, fast for large arrays; arrays summarised if `summary`.

    A summarised top-level array always names its shape (numpy before 2.2
    does not).
    """
    if summary:
        text = repr(value)
        if isinstance(value, np.ndarray) and value.size > SUMMARY_THRESHOLD \
                and "shape=" not in text:
            text = f"{text[:-1]}, shape={value.shape})"
        return text
    if isinstance(value, np.ndarray):
        return format_array(value) if value.size > SUMMARY_THRESHOLD else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(value_repr(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(value_repr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{value_repr(k)}: {value_repr(v)}"
                               for k, v in value.items()) + "}"
    return repr(value)


def has_large_array(value: Any) -> bool:
    """Whether :func:`value_repr` would summarise something in `value`."""
    if isinstance(value, np.ndarray):
        return value.size > SUMMARY_THRESHOLD
    if isinstance(value, (list, tuple)):
        return any(has_large_array(v) for v in value)
    if isinstance(value, dict):
        return any(has_large_array(k) or has_large_array(v) for k, v in value.items())
    return False


def format_array(array: np.ndarray[Any, Any]) -> str:
    """Every element of `array`, as numpy's repr lays them out, in linear time."""
    kind = array.dtype.kind
    flat = array.ravel()
    if kind in "biufcm":
        cells = flat.astype(str).tolist()
    elif kind == "M":
        cells = [f"'{s}'" for s in flat.astype(str).tolist()]
    else:
        cells = [value_repr(x) for x in flat.tolist()]
    if kind in "biufcmM":  # numbers are right-aligned in one width, as numpy does
        width = max(len(c) for c in cells)
        cells = [c.rjust(width) for c in cells]
    if array.ndim == 0:
        return _with_dtype(f"array({cells[0].strip()}", array.dtype)

    def row_text(row: list[str], indent: str, width: int) -> str:
        # numpy's _formatArray: fill each line up to `width` less the "," or "]"
        done, line = [], indent
        for i, cell in enumerate(row):
            if len(line) + len(cell) > width - 1 and len(line) > len(indent):
                done.append(line.rstrip())
                line = indent
            line += cell if i == len(row) - 1 else cell + ", "
        return "\n".join([*done, line])[len(indent):]

    def block(start: int, dims: tuple[int, ...], indent: str, width: int) -> str:
        if len(dims) == 1:
            return "[" + row_text(cells[start:start + dims[0]], indent, width) + "]"
        step = math.prod(dims[1:])
        gap = ",\n" + "\n" * (len(dims) - 2) + indent
        return "[" + gap.join(block(start + i * step, dims[1:], indent + " ", width - 1)
                              for i in range(dims[0])) + "]"

    return _with_dtype(f"array({block(0, array.shape, ' ' * 7, _LINE_WIDTH)}", array.dtype)


def _with_dtype(text: str, dtype: np.dtype[Any]) -> str:
    """`text` closed as numpy's repr closes it: ``, dtype=...)`` unless the default."""
    if dtype in (np.dtype(np.float64), np.dtype(np.int_), np.dtype(np.bool_),
                 np.dtype(np.complex128)):
        return text + ")"
    if dtype.names is not None:
        extra = f"dtype={dtype})"
    elif not dtype.isnative or dtype.kind in "USV" or not dtype.name.isalnum():
        extra = f"dtype='{dtype}')"
    else:
        extra = f"dtype={dtype.name})"
    last_line = len(text) + 1 - (text.rfind("\n") + 1)
    spacer = "\n      " if last_line + len(extra) + 1 > _LINE_WIDTH else " "
    return f"{text},{spacer}{extra}"


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
