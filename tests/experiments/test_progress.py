"""The progress bars: drawn when stderr is a terminal, silent with --quiet or in a pipe; every
phase of a run shown; an ETA that counts tracking and the final analysis."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from samhess.experiments import progress
from samhess.experiments.progress import ComparisonProgress, RunProgress

from .conftest import tiny_cli_args

terminal_only = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")


def _stderr_on_a_terminal(tmp_path, *args: str) -> str:
    """Run ``samhess ARGS`` with stderr on a pseudo-terminal; return what it drew there."""
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws an empty line: give it 160
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    try:
        process = subprocess.Popen([sys.executable, "-m", "samhess", *args],
                                   stdout=subprocess.DEVNULL, stderr=follower, cwd=tmp_path)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal is closed once everything written has been read
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=300)
    finally:
        os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


@terminal_only
def test_a_run_bar_shows_every_phase_and_an_eta(tmp_path):
    drawn = _stderr_on_a_terminal(tmp_path, "run", "--optimizer", "sgd", "--out", "run",
                                  *tiny_cli_args())
    steps = tiny_cli_args()[tiny_cli_args().index("--steps") + 1]
    # the bar is drawn before anything is measured, during step 0's record (with per-layer
    # curvature), during the records and the final analysis, each phase named
    for phase in ("starting", "layer record at step 0", "record at step 3", "training",
                  "final analysis: eigenvectors", "final analysis: landscape"):
        assert phase in drawn, phase
    assert "sgd seed 0: " in drawn
    assert f"step {steps}/{steps}" in drawn
    assert "ETA ?" in drawn  # before anything is timed
    assert "elapsed, ETA 0:0" in drawn  # once it is


@terminal_only
def test_a_comparison_has_one_bar_over_its_runs(tmp_path):
    drawn = _stderr_on_a_terminal(tmp_path, "compare", "--optimizers", "sgd", "--seeds", "2",
                                  "--out", "cmp", *tiny_cli_args(steps=2, track_every=1))
    assert "comparison: 0/2 runs done" in drawn and "comparison: 1/2 runs done" in drawn
    assert "[1/2] sgd seed 0: " in drawn and "[2/2] sgd seed 1: " in drawn


@terminal_only
def test_quiet_draws_nothing_on_a_terminal(tmp_path):
    assert _stderr_on_a_terminal(tmp_path, "run", "--optimizer", "sgd", "--out", "run",
                                 "--quiet", *tiny_cli_args()) == ""


def test_a_pipe_gets_no_progress_bar(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "samhess", "run", "--optimizer", "sgd",
         "--out", str(tmp_path / "run"), *tiny_cli_args()],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0 and process.stderr == ""


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_eta_counts_steps_records_and_the_analysis(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = RunProgress(desc="x", steps=100, step=0, records=3, layer_records=1, analysis=True,
                      enabled=False)
    assert bar.remaining() is None  # nothing timed yet
    with bar.phase("record at step 0", "record"):
        clock.now += 2.0
        # half-way through the first record nothing is timed yet
        assert bar.remaining() is None
    for _ in range(10):
        bar.trained(0.1, loss=1.0)
    # 90 steps of 0.1 s, 2 records of 2 s, 1 layer record (untimed: a record's 2 s) and the
    # analysis (untimed: 3 records' time, 6 s)
    assert bar.remaining() == pytest.approx(9.0 + 4.0 + 2.0 + 6.0)
    with bar.phase("layer record at step 50", "layer record"):
        clock.now += 5.0
        # a phase under way counts what it has left of its expected time (2 s, so 0 left)
        assert bar.remaining() == pytest.approx(9.0 + 4.0 + 0.0 + 6.0)
    assert bar.remaining() == pytest.approx(9.0 + 4.0 + 6.0)
    assert "ETA 0:19" in bar.postfix() and "step 10/100" in bar.postfix()
    bar.close()


def test_a_comparison_eta_uses_the_finished_runs_of_each_optimizer(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    comparison = ComparisonProgress(["sgd", "sgd", "sam", "sam"], enabled=False)
    comparison.finished("sgd", 10.0)
    run = comparison.run("sgd", desc="x", steps=10, step=0, records=0, layer_records=0,
                         analysis=False)
    for _ in range(4):
        run.trained(0.5, loss=1.0)
    # the current run: 6 steps of 0.5 s; each SAM run: no SAM run finished, so the mean of
    # the finished runs (10 s)
    assert comparison.remaining() == pytest.approx(3.0 + 2 * 10.0)
    run.close()
    comparison.finished("sgd", 5.0)
    assert comparison.remaining() == pytest.approx(2 * 7.5)
    comparison.close()


def test_the_bar_counts_the_records_the_loop_will_take():
    from samhess.experiments.config import build_run_config, record_steps
    from samhess.experiments.train import layer_record_due, remaining_record_steps

    config = build_run_config({}, {"optimizer": "sgd", "steps": 10, "track_every": 3,
                                   "layer_track_every": 6})
    # records at 0, 3, 6, 9 and the last step 10; per-layer at multiples of 6 and the last
    assert record_steps(config) == [0, 3, 6, 9, 10]
    assert remaining_record_steps(config, 0, 0) == ([3, 9], [0, 6, 10])
    assert [layer_record_due(config, s) for s in (0, 3, 6, 9, 10)] == [True, False, True,
                                                                        False, True]
    # resumed at step 6 after its record: what is left
    assert remaining_record_steps(config, 6, 3) == ([9], [10])
    off = build_run_config({}, {"optimizer": "sgd", "steps": 10, "track_every": 5,
                                "layer_track_every": 0})
    assert remaining_record_steps(off, 0, 0) == ([0, 5, 10], [])
