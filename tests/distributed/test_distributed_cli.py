"""``samhess run`` under ``torchrun --nproc-per-node 2`` (gloo, CPU): the same training as one
process, rank 0's files, ``--resume`` after ``kill -9`` of the whole job, and one error line."""

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

from .conftest import TORCHRUN, torchrun

pytestmark = pytest.mark.distributed

#: A SAM run of seconds on digits with the default MLP (no BatchNorm, so two ranks can equal one).
FLAGS = ["--optimizer", "sam", "--steps", "20", "--seed", "0", "--batch-size", "31",
         "--track-every", "4", "--checkpoint-every", "4", "--top-k", "2", "--trace-matvecs", "6",
         "--tracking-batch-size", "64", "--eval-examples", "128", "--density-probes", "1",
         "--density-lanczos-steps", "6", "--quiet"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "single"
    assert main(["run", *FLAGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "distributed"
    completed = torchrun(["-m", "samhess", "run", *FLAGS, "--out", str(out)])
    # rank 0 alone prints the summary
    assert completed.stdout.count("Report:") == 1
    return out


def test_two_ranks_reach_the_single_process_train_loss(single, distributed):
    final = json.loads((distributed / "summary.json").read_text())["final_train_loss"]["mean"]
    expected = json.loads((single / "summary.json").read_text())["final_train_loss"]["mean"]
    assert final == pytest.approx(expected, rel=1e-5)
    # along the way too: every record's losses, and the same curvature
    for mine, theirs in zip(records(distributed), records(single), strict=True):
        assert mine["step"] == theirs["step"]
        for key in ("train_loss", "test_loss", "batch_loss", "lambda_max", "hessian_trace"):
            if theirs[key] is None:  # no batch loss before the first step
                assert mine[key] is None
            else:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (mine["step"], key)
    config = json.loads((distributed / "config.json").read_text())
    assert config["sam_perturbation"] == "global"


def test_resume_after_killing_the_job_equals_the_straight_run(distributed, tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "samhess", "run",
               *FLAGS, "--out", str(killed)]
    # its own session, so that one signal kills the launcher and both ranks at once
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    while time.monotonic() < deadline and job.poll() is None:
        if (killed / "checkpoint.pt").exists() and metrics.exists() \
                and metrics.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    assert job.poll() is None, "the job ended before it could be killed mid-way"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert len(records(killed)) < len(records(distributed))

    resumed = torchrun(["-m", "samhess", "run", *FLAGS, "--out", str(killed), "--resume"])
    assert "Resumed from step" in resumed.stdout
    assert metrics.read_bytes() == (distributed / "metrics.jsonl").read_bytes()


def test_an_error_is_one_line_from_rank_zero_and_every_rank_stops(distributed):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    # the directory holds a finished run and neither --resume nor --force is given
    completed = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node=2", "-m", "samhess", "run", *FLAGS,
         "--out", str(distributed)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line.startswith("samhess:")]
    assert lines == [f"samhess: error: {distributed} already holds a run; pass --resume to "
                     "continue it or --force to replace it"]
