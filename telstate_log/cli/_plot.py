"""The ``plot`` subcommand: sensor histories against time, one panel per key.

Theory of operation
-------------------
A sensor's value holds from its sample's timestamp until the next sample,
so each key is drawn as a step plot (``where="post"``).  Panels share one
time axis in UTC; each is titled with its key.  Numbers are drawn on a
numeric axis; strings and booleans (``'slew'``, ``'track'``) on a
categorical one, one level per distinct value, sorted.  Values of other
types (arrays, tuples) cannot be drawn and make the command fail.

The window drawn is [ST, ET).  With ``--st`` the sample in force at ST
(the last one before it) is fetched too, so the first step starts at the
left edge; without it the window starts at the first sample.  Without
``--et`` it ends *now* if a writer holds the log's lock (a live log: the
last values still hold), else a little (5% of the span) after the last
sample.  Each key's last value is carried on to the right edge and its last
sample is marked with a dot, so a final state (``idle``) is never a
zero-width step hidden on the edge.  A window holding no samples at all is
an error, not an empty plot.

matplotlib is an optional dependency (the ``plot`` extra).  It is imported
only when the command runs, and only its object-oriented API with the Agg
canvas is used: no pyplot, no global state, no display needed.  The file
format follows the output file's extension (PNG, SVG, PDF, ...) and is
checked before the log is read; a name without one gets ``.png``.  The
command reports the file it actually wrote and the window it drew.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import time
from typing import Any

import numpy as np

from .. import KeyType
from ..storage import writer_active
from ._common import (
    CliError,
    UsageError,
    add_as_of_arguments,
    add_log_argument,
    command_parser,
    doing,
    open_log,
    parse_time,
    state_view,
)
from ._output import iso_utc, plural

__all__ = ["add_plot_parser", "build_figure", "output_file", "plot_series", "plot_window"]

MISSING = ("plot needs matplotlib, which is not installed: "
           "pip install 'telstate-log[plot]'  (or: pip install matplotlib)")

#: A key, its sample timestamps and their values (a numpy array or a list).
Series = tuple[str, np.ndarray, Any]


def add_plot_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "plot", "plot sensors against time to an image file (needs matplotlib)",
        "Plot the history of one or more sensors against time as step plots, one\n"
        "panel per key on a shared UTC time axis, and write it to FILE (format by\n"
        "extension: .png, .svg, .pdf, ...; no extension means .png).  Each key's\n"
        "last value is drawn on to the end of the window and its last sample\n"
        "marked.  Needs matplotlib (the 'plot' extra:\n"
        "pip install 'telstate-log[plot]').",
        ["telstate-log plot obs/log m000_pos_actual_scan_azim m000_pos_actual_scan_elev "
         "-o pos.png",
         "telstate-log plot obs/log obs_activity anc_air_temperature --st now-1h -o wx.svg"])
    add_log_argument(p)
    p.add_argument("keys", metavar="KEY", nargs="+", help="sensors (mutable keys) to plot")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="image file to write (format from the extension; none: .png)")
    p.add_argument("--st", metavar="TIME", type=parse_time, default=0.0,
                   help="start time (default: the first sample)")
    p.add_argument("--et", metavar="TIME", type=parse_time, default=math.inf,
                   help="end time, exclusive (default: now if a writer has the log open, "
                        "else just after the last sample)")
    add_as_of_arguments(p)
    p.set_defaults(func=run_plot)


def output_file(name: str) -> tuple[str, str]:
    """The file to write for ``-o NAME`` and its format; CliError for an unknown one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    supported = sorted(FigureCanvasAgg.get_supported_filetypes())
    ext = os.path.splitext(name)[1]
    if not ext:
        return name + ".png", "png"
    fmt = ext[1:].lower()
    if fmt not in supported:
        raise CliError(f"{name}: unknown image format {ext!r} (use one of: "
                       f"{', '.join('.' + f for f in supported)})")
    return name, fmt


def run_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (check before any work)
    except ImportError:
        raise CliError(MISSING) from None
    path, fmt = output_file(args.output)
    st, et = args.st, args.et
    if st > et:
        raise UsageError(f"inverted window: --st {iso_utc(st)} is after --et {iso_utc(et)}")
    if st == et:
        raise UsageError(f"empty window: --st and --et are both {iso_utc(st)}")
    series: list[Series] = []
    with open_log(args.log) as backend:
        ts = state_view(backend, args)
        for key in args.keys:
            kind = ts.key_type(key)
            if kind is None:
                raise CliError(f"{key}: no such key")
            if kind != KeyType.MUTABLE:
                raise CliError(f"{key} is not a sensor (it is {kind.name.lower()}): "
                               "only sensors can be plotted")
            t, values = ts.get_range_arrays(key, st, et, include_previous=st > 0)
            series.append((key, np.asarray(t, dtype=np.float64), values))
    travelled = getattr(args, "at", None) is not None or getattr(args, "as_of", None) is not None
    live = not travelled and writer_active(args.log)
    left, right = plot_window(series, st, et, time.time() if live else None)
    with doing("writing", path):
        try:
            plot_series(series, path, left, right, fmt)
        except RuntimeError as exc:  # a format's tool missing: .pgf needs LaTeX
            raise CliError(f"writing {path}: {exc}") from None
    total = sum(int(np.count_nonzero(t >= left)) for _, t, _ in series)
    print(f"wrote {path}: {plural(len(series), 'key')}, {plural(total, 'sample')}, "
          f"{iso_utc(left)} .. {iso_utc(right)}" + (" (now: the log is live)" if live else ""))
    return 0


def plot_window(series: list[Series], st: float, et: float,
                now: float | None = None) -> tuple[float, float]:
    """The window ``(left, right)`` to draw (see the module docstring).

    `now` is the current time for a live log, else None.  CliError if no
    key has a sample in [st, et).
    """
    inside = [t[t >= st] for _, t, _ in series]
    if not any(len(t) for t in inside):
        keys = ", ".join(key for key, _, _ in series)
        if st > 0:
            where = f"from {iso_utc(st)}" + (f" to {iso_utc(et)}" if math.isfinite(et) else "")
        else:
            where = f"before {iso_utc(et)}" if math.isfinite(et) else "at all"
        before = [float(t[-1]) for _, t, _ in series if len(t)]
        hint = f"; the last sample before it is at {iso_utc(max(before))}" if before else ""
        raise CliError(f"no samples of {keys} {where}{hint}")
    left = st if st > 0 else min(float(t[0]) for t in inside if len(t))
    if math.isfinite(et):
        return left, et
    last = max(float(t[-1]) for t in inside if len(t))
    if now is not None and now > last:
        return left, now
    return left, last + (0.05 * (last - left) if last > left else 1.0)


def _levels(key: str, values: Any) -> tuple[np.ndarray, list[str] | None]:
    """The y values to draw and, for a categorical axis, the level labels."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return values.astype(np.float64), None
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
           for v in values):
        return np.asarray(values, dtype=np.float64), None
    if all(isinstance(v, (str, bool, np.bool_)) for v in values):
        labels = sorted({str(v) for v in values})
        index = {label: i for i, label in enumerate(labels)}
        return np.array([index[str(v)] for v in values], dtype=np.float64), labels
    raise CliError(f"{key}: only sensors whose values are numbers or strings can be plotted")


def _utc(t: np.ndarray) -> np.ndarray:
    return np.round(t * 1e6).astype("datetime64[us]")


def build_figure(series: list[Series], left: float, right: float) -> Any:
    """Draw `series` (key, timestamps, values) as stacked step plots over [left, right]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dates: Any = importlib.import_module("matplotlib.dates")  # partly untyped

    fig = Figure(figsize=(10.0, 1.0 + 2.0 * len(series)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, t, values) in zip(axes, series):
        ax.set_title(key, loc="left", fontsize="medium")
        ax.grid(True, color="0.85")  # opaque: PostScript has no transparency
        if not len(t):
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center",
                    va="center", color="gray")
            continue
        y, labels = _levels(key, values)
        last_t, last_y = t[-1:], y[-1:]
        if right > t[-1]:  # the last value holds until the right edge
            t, y = np.append(t, right), np.append(y, y[-1])
        [line] = ax.step(_utc(t), y, where="post", linewidth=1.2)
        ax.plot(_utc(last_t), last_y, "o", color=line.get_color(), markersize=4,
                label="last sample")
        if labels is not None:
            ax.set_yticks(range(len(labels)), labels=labels)
            ax.set_ylim(-0.5, len(labels) - 0.5)
    bottom = axes[-1]
    bottom.set_xlim(_utc(np.array([left]))[0], _utc(np.array([right]))[0])
    locator = dates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    utc = datetime.timezone.utc
    bottom.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=utc))
    bottom.set_xlabel("time (UTC)")
    return fig


def plot_series(series: list[Series], path: str, left: float, right: float,
                fmt: str) -> None:
    """Draw `series` over [left, right] and write it to `path` in format `fmt`."""
    build_figure(series, left, right).savefig(path, format=fmt, dpi=100)
