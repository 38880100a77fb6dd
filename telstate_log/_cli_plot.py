"""The ``plot`` subcommand: sensor histories against time, one panel per key.

Theory of operation
-------------------
A sensor's value holds from its sample's timestamp until the next sample,
so each key is drawn as a step plot (``where="post"``), with its last value
carried on to the right edge of the plot.  Panels share one time axis in
UTC; each is titled with its key.  Numbers are drawn on a numeric axis;
strings and booleans (``'slew'``, ``'track'``) on a categorical one, one
level per distinct value, sorted.  Values of other types (arrays, tuples)
cannot be drawn and make the command fail.

With ``--st`` the sample in force at ST (the last one before it) is
fetched too, so the first step starts at the left edge instead of at the
first later sample.

matplotlib is an optional dependency (the ``plot`` extra).  It is imported
only when the command runs, and only its object-oriented API with the Agg
canvas is used: no pyplot, no global state, no display needed.  The file
format follows the output file's extension (PNG, SVG, PDF, ...).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
from typing import Any

import numpy as np

from ._cli import (
    CliError,
    add_as_of_arguments,
    add_log_argument,
    command_parser,
    open_log,
    parse_time,
    state_view,
)
from ._types import KeyType

__all__ = ["add_plot_parser", "plot_series"]

MISSING = ("plot needs matplotlib, which is not installed: "
           "pip install 'telstate-log[plot]'  (or: pip install matplotlib)")

Series = tuple[str, np.ndarray, list[Any]]


def add_plot_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "plot", "plot sensors against time to an image file (needs matplotlib)",
        "Plot the history of one or more sensors against time as step plots, one\n"
        "panel per key on a shared UTC time axis, and write it to FILE (format by\n"
        "extension: .png, .svg, .pdf).  Needs matplotlib (the 'plot' extra:\n"
        "pip install 'telstate-log[plot]').",
        ["telstate-log plot obs/log m000_pos_actual_scan_azim m000_pos_actual_scan_elev "
         "-o pos.png",
         "telstate-log plot obs/log obs_activity anc_air_temperature --st now-1h -o wx.svg"])
    add_log_argument(p)
    p.add_argument("keys", metavar="KEY", nargs="+", help="sensors (mutable keys) to plot")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="image file to write (format from the extension)")
    p.add_argument("--st", metavar="TIME", type=parse_time, default=0.0,
                   help="start time (default: the first sample)")
    p.add_argument("--et", metavar="TIME", type=parse_time, default=math.inf,
                   help="end time (default: the last sample)")
    add_as_of_arguments(p)
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (check before any work)
    except ImportError:
        raise CliError(MISSING) from None
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
            samples = ts.get_range(key, args.st, args.et, include_previous=args.st > 0)
            series.append((key, np.array([t for _, t in samples], dtype=np.float64),
                           [v for v, _ in samples]))
    plot_series(series, args.output, st=args.st, et=args.et)
    total = sum(len(t) for _, t, _ in series)
    print(f"wrote {args.output}: {len(series)} key{'s' * (len(series) != 1)}, "
          f"{total} sample{'s' * (total != 1)}")
    return 0


def _levels(key: str, values: list[Any]) -> tuple[np.ndarray, list[str] | None]:
    """The y values to draw and, for a categorical axis, the level labels."""
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


def plot_series(series: list[Series], output: str, *, st: float = 0.0,
                et: float = math.inf) -> None:
    """Draw `series` (key, timestamps, values) as stacked step plots into `output`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dates: Any = importlib.import_module("matplotlib.dates")  # partly untyped

    stamps = [t for _, t, _ in series if len(t)]
    left = st if st > 0 else min((float(t[0]) for t in stamps), default=0.0)
    right = et if math.isfinite(et) else max([left, *(float(t[-1]) for t in stamps)])
    if right <= left:  # only the value in force at ST: show it over a second
        right = left + 1.0
    fig = Figure(figsize=(10.0, 1.0 + 2.0 * len(series)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, t, values) in zip(axes, series):
        ax.set_title(key, loc="left", fontsize="medium")
        ax.grid(True, alpha=0.3)
        if not len(t):
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center",
                    va="center", color="gray")
            continue
        y, labels = _levels(key, values)
        if right > t[-1]:  # the last value holds until the right edge
            t, y = np.append(t, right), np.append(y, y[-1])
        ax.step(_utc(t), y, where="post", linewidth=1.2)
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
    fig.savefig(output, dpi=100)
