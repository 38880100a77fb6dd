"""``plot``: sensor histories to an image file (matplotlib is optional)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import T0, build_log, cli, run

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.cli._main import parse_time

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("plot") / "log"
    build_log(path)
    return str(path)


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           log: str) -> None:
    image = pytest.importorskip("matplotlib.image")
    out_file = tmp_path / "plot.png"
    rc, out, err = cli(capsys, "plot", log, "s", "status", "-o", str(out_file))
    assert rc == 0, err
    # the window ends 5% of its span after the last sample (T0 + 39), not on it
    assert out == (f"wrote {out_file}: 2 keys, 43 samples, "
                   "2023-11-14T22:13:20.000Z .. 2023-11-14T22:14:00.950Z\n")
    data = out_file.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pixels = image.imread(str(out_file))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 500  # two stacked panels


def test_plot_in_a_subprocess_with_a_time_window(tmp_path: Path, log: str) -> None:
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "window.svg"
    proc = run("plot", log, "s", "--st", str(T0 + 5.5), "--et", "2023-11-14T22:13:40Z",
               "-o", str(out_file))
    assert proc.returncode == 0, proc.stderr
    # 6..19 plus the late sample at 10.5 (5, the value in force at the start, is drawn
    # but not counted: it is outside the window)
    assert proc.stdout == (f"wrote {out_file}: 1 key, 15 samples, "
                           "2023-11-14T22:13:25.500Z .. 2023-11-14T22:13:40.000Z\n")
    assert out_file.read_text().lstrip().startswith("<?xml")


def test_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], log: str) -> None:
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "x.png"
    for argv, message in ((["s", "obs_target"], "obs_target is not a sensor"),
                          (["nokey"], "nokey: no such key")):
        rc, _, err = cli(capsys, "plot", log, *argv, "-o", str(out_file))
        assert rc == 1 and message in err and err.count("\n") == 1
    assert not out_file.exists()
    rc, _, err = cli(capsys, "plot", log, "s")
    assert rc == 2 and "-o/--output" in err


def test_plot_without_matplotlib(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: Any, log: str) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    rc, out, err = cli(capsys, "plot", log, "s", "-o", str(tmp_path / "x.png"))
    assert rc == 1 and out == ""
    assert "matplotlib" in err and "pip install 'telstate-log[plot]'" in err
    assert err.count("\n") == 1


def test_plot_refuses_an_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        log: str) -> None:
    """``-o p.xyz`` was a traceback (ValueError from matplotlib) after reading the log."""
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "p.xyz"
    rc, out, err = cli(capsys, "plot", log, "s", "-o", str(out_file))
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert f"{out_file}: unknown image format '.xyz'" in err
    assert all(ext in err for ext in (".png", ".svg", ".pdf"))
    assert not out_file.exists()
    rc, out, err = cli(capsys, "plot", log, "s", "-o", str(tmp_path / "p.PDF"))
    assert rc == 0 and (tmp_path / "p.PDF").read_bytes().startswith(b"%PDF")
    rc, out, err = cli(capsys, "plot", log, "s", "-o", str(tmp_path / "none" / "p.png"))
    assert rc == 1 and out == "" and err.count("\n") == 1 and "p.png" in err


def test_plot_reports_the_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        log: str) -> None:
    """``-o noext`` printed ``wrote noext`` but wrote ``noext.png``."""
    pytest.importorskip("matplotlib")
    rc, out, err = cli(capsys, "plot", log, "s", "-o", str(tmp_path / "noext"))
    assert rc == 0, err
    assert out.startswith(f"wrote {tmp_path / 'noext.png'}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext.png"]
    assert (tmp_path / "noext.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_shows_the_final_state(log: str) -> None:
    """The last value is drawn on past the last sample, which is marked."""
    pytest.importorskip("matplotlib")
    from matplotlib.dates import date2num

    from telstate_log.cli._plot import build_figure, plot_window

    series = [("status", np.array([T0, T0 + 10]), ["slew", "track"]),
              ("s", np.array([T0 + 1.0, T0 + 30.0]), np.array([5.0, 6.0]))]
    left, right = plot_window(series, 0.0, math.inf)
    assert (left, right) == (T0, T0 + 30 + 0.05 * 30)
    fig = build_figure(series, left, right)
    for ax in fig.axes:
        step, marker = ax.get_lines()
        x, y = step.get_xdata(), step.get_ydata()
        assert date2num(x[-1]) == pytest.approx(ax.get_xlim()[1])  # reaches the right edge
        assert y[-1] == y[-2]
        assert marker.get_marker() == "o" and len(marker.get_xdata()) == 1
        assert date2num(marker.get_xdata()[0]) == pytest.approx(date2num(x[-2]))
    assert fig.axes[0].get_yticklabels()[1].get_text() == "track"
    # An explicit end: the window ends there; a live log's (no --et) ends now.
    assert plot_window(series, T0 + 5, T0 + 100) == (T0 + 5, T0 + 100)
    assert plot_window(series, 0.0, math.inf, now=T0 + 500) == (T0, T0 + 500)


def test_plot_of_a_live_log_ends_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "live"
    with LogBackend(path) as backend:  # the writer stays open: the log is live
        ts = TelescopeState(backend)
        start = time.time() - 100
        for i in range(5):
            ts.add("temp", 14.0 + i, ts=start + 10 * i)
        backend.sync()
        before = time.time()
        rc, out, err = cli(capsys, "plot", str(path), "temp", "-o", str(tmp_path / "p.png"))
        after = time.time()
    assert rc == 0, err
    assert out.endswith(" (now: the log is live)\n")
    right = parse_time(out.split(" .. ")[1].split()[0])
    assert before - 0.001 <= right <= after + 0.001
    rc, out, err = cli(capsys, "plot", str(path), "temp", "-o", str(tmp_path / "p.png"))
    assert rc == 0 and "(now" not in out  # the writer has gone: the window ends after 40 s
    assert parse_time(out.split(" .. ")[1].split(",")[0].strip()) == \
        pytest.approx(start + 42, abs=0.001)


def test_plot_of_a_window_without_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          log: str) -> None:
    """``--st now-1m`` on older data drew a 1-s window; now it says there is nothing."""
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "x.png"
    rc, out, err = cli(capsys, "plot", log, "s", "status", "--st", "now-1m", "-o",
                       str(out_file))
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert "no samples of s, status from " in err
    assert "the last sample before it is at 2023-11-14T22:13:59.000Z" in err
    assert not out_file.exists()
    rc, _, err = cli(capsys, "plot", log, "s", "--et", str(T0 - 10), "-o", str(out_file))
    assert rc == 1 and "no samples of s before 2023-11-14T22:13:10.000Z" in err
    for et, message in ((T0 + 5, "empty window"), (T0 + 4, "inverted window")):
        rc, _, err = cli(capsys, "plot", log, "s", "--st", str(T0 + 5), "--et", str(et),
                         "-o", str(out_file))
        assert rc == 2 and message in err and not out_file.exists()
