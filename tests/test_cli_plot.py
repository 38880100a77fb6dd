"""``plot``: sensor histories to an image file (matplotlib is optional)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli import T0, build_log, cli, run

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
    assert out == f"wrote {out_file}: 2 keys, 43 samples\n"
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
    # 5..19 plus the late sample at 10.5; 5 is the value in force at the start
    assert proc.stdout == f"wrote {out_file}: 1 key, 16 samples\n"
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
