"""verify, repair, checkpoint and seal on the command line: reports and exit codes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_cli import LOG_EVENTS, build_log, cli, run
from test_seal import _doctor, forge_pruned_claim, make_log, make_other_log

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of a few segments, every finished one sealed."""
    path = tmp_path_factory.mktemp("maint") / "log"
    build_log(path)
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as backend:
        ts = TelescopeState(backend)
        for i in range(300):
            ts.add("more", float(i), ts=2e9 + i)
        backend.seal()
    return path


@pytest.fixture
def log(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the pristine log (tests may damage it)."""
    shutil.copytree(pristine, tmp_path / "log")
    return tmp_path / "log"


def segments(path: Path) -> list[Path]:
    return [path / name for _, name in list_segments(OsFileSystem(), str(path))]


def damage(path: Path, index: int = 1) -> tuple[Path, int]:
    """Flip a bit in the middle of segment `index`: returns (file, offset)."""
    seg = segments(path)[index]
    data = bytearray(seg.read_bytes())
    offset = len(data) // 2
    data[offset] ^= 0x04
    seg.write_bytes(bytes(data))
    return seg, offset


# ----------------------------------------------------------------- verify
def test_verify_a_good_log(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rc, out, _ = cli(capsys, "verify", str(log))
    head = verify_log(log).head
    assert rc == 0 and head is not None
    assert f"head hash    {head}" in out and out.rstrip().endswith("result       OK")
    rc, out, _ = cli(capsys, "verify", str(log), "--json")
    data = json.loads(out)
    assert rc == 0 and data["passed"] and data["ok"] and data["problems"] == []
    assert data["head"] == head and data["seal_chain"][-1] == head
    assert data["events"] == LOG_EVENTS + 300 and data["head_check"] is None


def test_verify_a_damaged_log_names_file_and_offset(capsys: pytest.CaptureFixture[str],
                                                    log: Path) -> None:
    seg, offset = damage(log)
    rc, out, _ = cli(capsys, "verify", str(log))
    assert rc == 1
    problem = next(line for line in out.splitlines() if line.startswith("problem"))
    assert f"{seg} at byte " in problem
    reported = int(problem.split(" at byte ")[1].split(":")[0])
    assert reported <= offset
    assert "DAMAGED" in out and f"telstate-log repair {log}" in out
    proc = run("verify", str(log), "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert not data["passed"] and data["problems"][0]["file"] == str(seg)
    assert data["problems"][0]["offset"] == reported


def test_verify_head(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    chain = verify_log(log).seal_chain
    assert len(chain) >= 2
    rc, out, _ = cli(capsys, "verify", str(log), "--head", chain[0].upper())
    assert rc == 0 and "is in the seal chain: seal 1 of" in out
    assert "positions 1.." in out
    rc, out, _ = cli(capsys, "verify", str(log), "--head", "ab" * 32, "--json")
    data = json.loads(out)
    assert rc == 1 and not data["passed"] and data["ok"]
    assert data["head_check"]["found"] is False
    # An auditor's old head stays valid as the log grows and is sealed again.
    with LogBackend(log, checkpoint_bytes=None) as backend:
        TelescopeState(backend).add("more", -1.0, ts=3e9)
        backend.seal()
    rc, out, _ = cli(capsys, "verify", str(log), "--head", chain[-1], "--json")
    data = json.loads(out)
    assert rc == 0 and data["head_check"]["index"] == len(chain)
    assert data["head"] != chain[-1]
    # Tampering with a sealed segment breaks the chain from there on.
    damage(log, 0)
    rc, _, _ = cli(capsys, "verify", str(log), "--head", chain[0])
    assert rc == 1


# ----------------------------------------------------------------- repair
def test_repair_dry_run_then_repair_then_verify(capsys: pytest.CaptureFixture[str],
                                                log: Path) -> None:
    seg, _ = damage(log)
    before = {p.name: p.read_bytes() for p in segments(log)}
    rc, out, _ = cli(capsys, "repair", str(log), "--dry-run")
    assert rc == 1 and "dry run: nothing changed" in out and f"damage     {seg}" in out
    assert {p.name: p.read_bytes() for p in segments(log)} == before
    rc, out, _ = cli(capsys, "repair", str(log), "--json")
    data = json.loads(out)
    assert rc == 0 and data["ok"] and data["damaged"] and data["verified"]
    lo, hi = data["lost_positions"]
    assert lo == data["kept_position"] + 1 and hi == LOG_EVENTS + 300
    assert data["problem"]["file"] == str(seg) and data["moved_to"].startswith(str(log))
    assert data["truncated"]["file"] == str(seg)
    assert all(not (log / Path(m).name).exists() for m in data["moved"])
    rc, out, _ = cli(capsys, "verify", str(log))
    assert rc == 0
    with LogBackend(log, readonly=True, follow=False) as backend:
        assert backend.position == data["kept_position"]
    rc, out, _ = cli(capsys, "repair", str(log))
    assert rc == 0 and "none found: nothing to repair" in out


def test_repair_human_report_in_a_subprocess(log: Path) -> None:
    damage(log)
    proc = run("repair", str(log))
    assert proc.returncode == 0, proc.stderr
    fields = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert fields["kept"].startswith("positions 1..")
    assert fields["lost"].startswith("positions ") and fields["lost"].endswith(" events)")
    assert "cut at byte" in fields["truncated"]
    assert fields["result"] == "repaired: the log verifies"


def test_maintenance_needs_the_writer_lock(capsys: pytest.CaptureFixture[str],
                                           log: Path) -> None:
    with LogBackend(log):
        for command in ("repair", "checkpoint", "seal"):
            rc, out, err = cli(capsys, command, str(log))
            assert rc == 1 and out == "", command
            assert err.startswith(f"telstate-log {command}: error: ") and "locked" in err
            assert err.count("\n") == 1


# ------------------------------------------------------ checkpoint, seal
def test_checkpoint(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    rc, out, _ = cli(capsys, "checkpoint", str(log), "--json")
    data = json.loads(out)
    assert rc == 0 and data["position"] == LOG_EVENTS + 300
    assert Path(data["checkpoint"]).is_file()
    proc = run("checkpoint", str(log))
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"checkpoint at position {LOG_EVENTS + 300}: ")
    report = verify_log(log)
    assert report.ok and report.checkpoints_ok == 1  # the same position: rewritten
    rc, out, _ = cli(capsys, "info", str(log), "--json")
    assert json.loads(out)["positions"]["checkpoint"] == LOG_EVENTS + 300


def test_seal_with_nothing_new(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    head = verify_log(log).head
    proc = run("seal", str(log))
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["nothing new to seal: the current segment holds no "
                                        "events", f"head hash {head}"]
    rc, out, _ = cli(capsys, "seal", str(log), "--json")
    data = json.loads(out)
    assert rc == 0 and data["head"] == head and data["newly_sealed"] == []
    assert data["unsealed"] is None


def test_seal_seals_finished_segments(capsys: pytest.CaptureFixture[str], log: Path) -> None:
    (log / "seals").unlink()  # as if every finished segment had yet to be sealed
    rc, out, _ = cli(capsys, "seal", str(log), "--json")
    data = json.loads(out)
    report = verify_log(log)
    assert rc == 0 and report.ok and data["head"] == report.head
    assert [s["segment"] for s in data["newly_sealed"]] == [p.name for p in segments(log)[:-1]]
    assert data["newly_sealed"][-1]["last"] == LOG_EVENTS + 300
    rc, out, _ = cli(capsys, "info", str(log), "--json")
    info = json.loads(out)
    assert info["head"] == data["head"] and info["positions"]["sealed"] == LOG_EVENTS + 300


def test_seal_refuses_to_claim_what_it_did_not_seal(capsys: pytest.CaptureFixture[str],
                                                    log: Path) -> None:
    with LogBackend(log, checkpoint_bytes=None) as backend:
        TelescopeState(backend).add("more", -1.0, ts=3e9)
    rc, out, _err = cli(capsys, "seal", str(log), "--json")
    data = json.loads(out)
    [new] = data["newly_sealed"]
    assert rc == 0 and new["last"] == LOG_EVENTS + 301 and new["seal"] == data["head"]


def test_prune(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as backend:
        for i in range(400):
            backend.add_mutable(b"s", encode_value(float(i)), float(i))
    rc, out, _ = cli(capsys, "prune", str(path))
    assert rc == 2
    rc, out, _ = cli(capsys, "prune", str(path), "--before", "200", "--json")
    data = json.loads(out)
    assert rc == 0 and data["removed"] and data["history_from"] <= 201
    rc, out, err = cli(capsys, "get", str(path), "s", "--at", "1")
    assert rc == 1 and "pruned" in err
    rc, out, _ = cli(capsys, "verify", str(path))
    assert rc == 0


# ------------------------------------ kept heads, pruning and repair (issue 14: 1, 8, 9)
def _fields(out: str) -> dict[str, str]:
    """``label  value`` lines (labels may hold one space, the gap is two or more)."""
    pairs = (re.split(r" {2,}", line, maxsplit=1) for line in out.splitlines() if line.strip())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def test_verify_head_rejects_a_forged_log_claiming_it_as_pruned(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Item 1: the whole log replaced, its seals chained on from a forged
    "pruned" seal equal to the auditor's kept head, and ``pruned`` = 1."""
    kept = make_log(tmp_path / "genuine")
    forged = tmp_path / "forged"
    make_other_log(forged)
    forge_pruned_claim(forged, kept)
    rc, out, _ = cli(capsys, "verify", str(forged), "--head", kept)
    fields = _fields(out)
    assert rc == 1
    assert fields["head check"].startswith(f"{kept} cannot be verified: pruned")
    assert "nothing sealed up to it changed" not in out
    assert fields["result"] == "FAILED: the head hash cannot be verified: pruned"
    rc, out, _ = cli(capsys, "verify", str(forged), "--head", kept, "--json")
    data = json.loads(out)
    assert rc == 1 and not data["passed"]
    assert data["head_check"]["status"] == "pruned" and data["head_check"]["found"] is False
    assert kept not in data["seal_chain"] and data["pruned_chain"] == [kept]


def test_verify_and_repair_agree_on_a_garbage_checkpoint(capsys: pytest.CaptureFixture[str],
                                                         log: Path) -> None:
    """Item 8: verify reported a garbage checkpoint and told the user to run
    repair; repair said "none found ... OK" and verify still failed."""
    junk = log / "checkpoints" / "00000000000000000010.ckpt"
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"garbage")
    rc, out, _ = cli(capsys, "verify", str(log))
    assert rc == 1 and f"'telstate-log repair {log}'" in _fields(out)["result"]
    rc, out, _ = cli(capsys, "repair", str(log), "--dry-run")
    assert rc == 1 and junk.exists() and f"moved   {junk} -> " in out
    rc, out, _ = cli(capsys, "repair", str(log))
    fields = _fields(out)
    assert rc == 0 and fields["result"] == "repaired: the log verifies"
    assert fields["damage"].startswith(f"{junk}: damaged checkpoint") and "lost" not in fields
    assert not junk.exists()
    rc, out, _ = cli(capsys, "verify", str(log))
    assert rc == 0 and _fields(out)["result"] == "OK"


def test_verify_does_not_suggest_repair_for_tampering(capsys: pytest.CaptureFixture[str],
                                                      log: Path) -> None:
    """Item 8: what repair cannot fix, verify does not send the user to repair for."""
    seg = _doctor(log, 1, "value")
    rc, out, _ = cli(capsys, "verify", str(log))
    fields = _fields(out)
    assert rc == 1 and "[repair cannot fix this]" in fields["problem"]
    assert str(seg) in fields["problem"]
    assert "cannot fix" in fields["result"] and f"repair {log}" not in fields["result"]
    before = seg.read_bytes()
    rc, out, _ = cli(capsys, "repair", str(log))
    assert rc == 1 and _fields(out)["result"].startswith("FAILED: repair cannot fix 1 problem")
    assert "none found" not in out and seg.read_bytes() == before


def _prune_everything(path: Path) -> str:
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as backend:
        for i in range(400):
            backend.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
        head = backend.seal()
        assert backend.prune(older_than=0).history_from == 401
    assert head is not None
    return head


def test_head_and_pruned_range_after_pruning_everything(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    """Item 9: after prune, verify showed no head and info "no events"."""
    path = tmp_path / "log"
    head = _prune_everything(path)
    rc, out, _ = cli(capsys, "verify", str(path))
    fields = _fields(out)
    assert rc == 0 and fields["result"] == "OK"
    assert fields["head hash"] == (f"{head} (its segment was pruned: it can no longer be "
                                   "verified from this log)")
    assert fields["pruned"].startswith("positions 1..400 (6 sealed segments")
    rc, out, _ = cli(capsys, "verify", str(path), "--json")
    data = json.loads(out)
    assert data["head"] == head and data["head_pruned"] is True
    assert data["pruned_positions"] == [1, 400] and data["pruned_seals"] == 6
    rc, out, _ = cli(capsys, "verify", str(path), "--head", head)
    assert rc == 1 and "cannot be verified: pruned" in _fields(out)["head check"]
    rc, out, _ = cli(capsys, "info", str(path))
    fields = _fields(out)
    assert rc == 0 and fields["positions"].startswith(
        "1 .. 400 (1 .. 400 pruned: their state is kept, not their history;")
    assert fields["head hash"] == (f"{head} (6 segments sealed; its segment was pruned: "
                                   "it can no longer be verified from this log)")
    rc, out, _ = cli(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert info["positions"]["pruned"] == {"first": 1, "last": 400}
    assert info["head"] == head and info["head_pruned"] is True


def test_a_surviving_head_after_a_partial_prune(capsys: pytest.CaptureFixture[str],
                                                log: Path) -> None:
    head = verify_log(log).head
    assert head is not None
    with LogBackend(log, checkpoint_bytes=None) as backend:
        cut = backend.prune(before=100).history_from
    rc, out, _ = cli(capsys, "verify", str(log), "--head", head)
    fields = _fields(out)
    assert rc == 0 and fields["head hash"] == head and fields["result"] == "OK"
    assert f"positions before {cut} were pruned and are not covered" in fields["head check"]
    assert fields["pruned"].startswith(f"positions 1..{cut - 1} ")
    rc, out, _ = cli(capsys, "info", str(log))
    assert f"(1 .. {cut - 1} pruned: " in _fields(out)["positions"]
    assert "pruned" not in _fields(out)["head hash"]
