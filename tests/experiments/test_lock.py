"""One writer per directory: the lock, its holder's name in the refusal, and stale lock files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samhess.cli import main
from samhess.errors import DirectoryLockedError
from samhess.experiments.lock import LOCK_FILE, run_directory_lock

from .conftest import TINY_RUN_FLAGS, run_in_process, tiny_cli_args

#: Holds the lock of argv[1] the way samhess does (flock, holder line), without importing torch,
#: until killed.
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".samhess.lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"command": "samhess run", "pid": os.getpid(), "host": "here",
                         "since": "a moment ago"}).encode())
print("held", flush=True)
time.sleep(120)
"""


def _hold(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_directory_and_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold(out)
    try:
        with pytest.raises(DirectoryLockedError) as info:
            with run_directory_lock(out, "samhess run"):
                pass
        assert str(info.value) == (
            f"{out} is in use by samhess run (process {holder.pid} on here, since a moment "
            "ago); wait for it to end or stop it (one process writes a run directory at a "
            "time)")
        for extra in ([], ["--resume"], ["--force"]):
            assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet", *extra,
                         *tiny_cli_args()]) == 2
            err = capsys.readouterr().err.strip()
            assert err == f"samhess: error: {info.value}"
        assert main(["report", str(out)]) == 2
        assert f"is in use by samhess run (process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written meanwhile


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    with run_directory_lock(out, "samhess run") as lock:
        holder_line = json.loads((out / LOCK_FILE).read_text())
        assert holder_line["pid"] == os.getpid() and holder_line["command"] == "samhess run"
        assert lock.created == []
    assert not (out / LOCK_FILE).exists()


#: Takes argv[1]'s lock, writes metrics.jsonl into each further argument with the rename of
#: write_bytes_atomic left out (a kill -9 between the temporary file and its rename leaves the
#: same), then dies by SIGKILL.
DIES_MID_WRITE = """
import os, signal, sys
from samhess.experiments import runfiles
from samhess.experiments.lock import hold_directory
hold_directory(sys.argv[1], "samhess run")
os.replace = lambda *args: None
for target in sys.argv[2:]:
    runfiles.write_bytes_atomic(os.path.join(target, "metrics.jsonl"), b"half")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_writer_removes_what_a_writer_killed_mid_write_left(tmp_path):
    out = tmp_path / "run"
    (out / "arms" / "sam").mkdir(parents=True)
    died = subprocess.run([sys.executable, "-c", DIES_MID_WRITE, str(out), str(out),
                           str(out / "arms" / "sam")])
    assert died.returncode == -signal.SIGKILL
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp"))
    assert [name.split("/")[-1].startswith(".metrics.jsonl.") for name in left] == [True, True]
    # files of the user's that look alike, and a subdirectory that has its own lock
    (out / ".notes.tmp").write_text("mine")
    (out / "member").mkdir()
    (out / "member" / LOCK_FILE).write_text("")
    (out / "member" / ".metrics.jsonl.abcd1234.tmp").write_text("the member's own writer")
    with run_directory_lock(out, "samhess run --resume"):
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tmp")) == [
            ".notes.tmp", "member/.metrics.jsonl.abcd1234.tmp"]


def test_the_lock_is_reentrant_and_removes_only_the_directories_it_made(tmp_path):
    out = tmp_path / "a" / "b"
    with run_directory_lock(out, "samhess compare") as outer:
        with run_directory_lock(out, "samhess report") as inner:
            assert inner is outer
        assert (out / LOCK_FILE).exists()
        assert outer.created == [tmp_path / "a", out]
    assert not (tmp_path / "a").exists()
    with run_directory_lock(out, "samhess run"):
        (out / "kept.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


@pytest.mark.slow
def test_two_concurrent_runs_then_kill_9_and_resume(tmp_path):
    """The second writer is refused while the first runs (also with --resume and --force; the
    first is paused meanwhile, so that it cannot finish first); after kill -9 of the first, its
    lock file is stale and --resume finishes the run exactly as a straight run."""
    flags = {**TINY_RUN_FLAGS, "steps": 60, "track_every": 2, "checkpoint_every": 4}
    straight = tmp_path / "straight"
    run_in_process(straight, **flags, optimizer="sam")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "samhess", "run", "--optimizer", "sam", "--out", str(out),
            "--quiet", *tiny_cli_args(**flags)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (out / "checkpoint.pt").exists():
                break
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before the second could start"
        first.send_signal(signal.SIGSTOP)  # alive and holding the lock while the others try
        for extra in ([], ["--resume"], ["--force"]):
            second = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in second.stderr
            assert lines[0].startswith(f"samhess: error: {out} is in use by samhess run "
                                       f"(process {first.pid} on ")
        assert first.poll() is None, "the first run ended before it could be killed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert (out / LOCK_FILE).exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert not (out / LOCK_FILE).exists()
