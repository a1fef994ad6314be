"""Nothing lost, nothing wrong in silence: corrupt checkpoints, resumed logs that are not the
expected steps, divergence, a failing part of the final analysis, a full disk, and reruns."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from samhess.cli import main
from samhess.errors import RunFileError
from samhess.experiments.runfiles import REPORT_FIGURES, load_checkpoint

from .conftest import (
    TINY_RUN_FLAGS, flip_a_bit_of_the_largest_tensor, run_in_process, tiny_cli_args,
)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_flipped_bit_in_the_checkpoint_is_caught_by_its_crc(tiny_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    member = flip_a_bit_of_the_largest_tensor(copy / "checkpoint.pt")
    # torch itself loads the damaged file without a word ...
    loaded = torch.load(copy / "checkpoint.pt", weights_only=True)
    original = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert any(not torch.equal(loaded["model"][k], original["model"][k]) for k in original["model"])
    # ... the CRC check does not.
    with pytest.raises(RunFileError) as info:
        load_checkpoint(copy / "checkpoint.pt")
    assert str(info.value) == (
        f"checkpoint {copy / 'checkpoint.pt'} is corrupt (the CRC-32 of its member {member} "
        "does not match its content); remove it and start the run again with --force")
    for args in (["analyze", str(copy)],
                 ["run", "--optimizer", "sam-ire", "--out", str(copy), "--resume", "--quiet",
                  *tiny_cli_args()]):
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == f"samhess: error: {info.value}"


def test_resume_refuses_a_log_that_does_not_hold_the_expected_steps(tiny_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    lines = (copy / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    damaged = lines[0] + lines[1] + lines[1] + lines[2]  # a record written twice
    (copy / "metrics.jsonl").write_bytes(damaged)
    assert main(["run", "--optimizer", "sam-ire", "--out", str(copy), "--resume", "--quiet",
                 *tiny_cli_args()]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: cannot resume: {copy / 'metrics.jsonl'} holds the steps [0, 3, 3] "
        "where the checkpoint expects [0, 3, 6]; another process may have written it. Start "
        "the run again with --force")
    assert (copy / "metrics.jsonl").read_bytes() == damaged  # nothing cut


DIVERGENCE = re.compile(r"samhess: error: training diverged at step (\d+) of the (\S+) run "
                        r"\((.+)\); lower --lr( or --rho)?")


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "sam-ire"])
def test_a_diverging_run_stops_with_one_line_and_no_null_record(optimizer, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--optimizer", optimizer, "--lr", "1e6", "--out", str(out), "--quiet",
                 *tiny_cli_args(steps=12, track_every=1)]) == 2
    match = DIVERGENCE.fullmatch(capsys.readouterr().err.strip())
    assert match, "not the divergence line"
    assert match.group(2) == optimizer and bool(match.group(4)) == (optimizer != "sgd")
    records = _records(out)
    assert [r["step"] for r in records] == list(range(len(records)))
    assert int(match.group(1)) >= records[-1]["step"]
    for record in records:
        for key in ("train_loss", "lambda_max", "hessian_trace", "grad_norm"):
            assert record[key] is not None and abs(record[key]) < float("inf"), (key, record)


def test_divergence_first_seen_by_tracking_gets_the_same_line(tmp_path, monkeypatch, capsys):
    import samhess.experiments.train as train

    original = train.training_step

    def poisoned(context, batch):
        loss = original(context, batch)
        if context.optimizer.state is not None and len(calls) == 2:
            with torch.no_grad():
                for p in context.model.parameters():
                    p.fill_(float("nan"))
        calls.append(loss)
        return loss  # finite: the loop's own check does not see it

    calls: list[float] = []
    monkeypatch.setattr(train, "training_step", poisoned)
    out = tmp_path / "run"
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet",
                 *tiny_cli_args(steps=6, track_every=3)]) == 2
    assert capsys.readouterr().err.strip() == (
        "samhess: error: training diverged at step 3 of the sgd run (the weights are not "
        "finite); lower --lr")
    assert [r["step"] for r in _records(out)] == [0]  # no record of NaNs before the line


def test_a_failing_part_of_the_final_analysis_is_recorded_and_the_run_completes(
        tmp_path, monkeypatch, capsys):
    import samhess.experiments.analyze as analyze

    def failing(task):
        raise ZeroDivisionError("the gradient is zero")

    monkeypatch.setattr(analyze, "_taylor_in_float64", failing)
    out = tmp_path / "run"
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--quiet",
                 *tiny_cli_args()]) == 0
    assert "Final analysis: sgd seed 0: taylor failed (ZeroDivisionError: the gradient is " \
           "zero)." in capsys.readouterr().out
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["taylor"] == {"error": "ZeroDivisionError: the gradient is zero"}
    assert {"gains", "sharp_flat", "spectral_density"} <= set(analysis)
    assert "error" not in analysis["gains"] and analysis["complete"] is True
    report = (out / "report.md").read_text()
    assert ("## Parts of the final analysis that failed\n\n- sgd seed 0: taylor failed "
            "(ZeroDivisionError: the gradient is zero).") in report
    assert not (out / "plots" / "taylor.png").exists()
    assert main(["analyze", str(out)]) == 0
    assert "taylor failed: ZeroDivisionError" in capsys.readouterr().out
    assert not (out / "analysis" / "taylor.png").exists()


#: The fsyncs after the step-3 record: 1 the log's line, 2 the manifest after it (3 its
#: folder's, which is allowed to fail), 4 the manifest before the checkpoint, 6 the checkpoint,
#: 8 timing.json.
@pytest.mark.parametrize("failing_fsync", [6, *(pytest.param(n, marks=pytest.mark.slow)
                                                for n in (1, 2, 4, 8))])
def test_a_full_disk_corrupts_nothing_and_the_run_resumes_exactly(
        failing_fsync, tmp_path, monkeypatch, capsys):
    """The n-th fsync after the step-3 record is measured fails with ENOSPC: one line naming the
    file, exit 2, and every file left readable and samhess's; --resume then ends as a straight
    run."""
    import samhess.experiments.train as train

    straight = tmp_path / "straight"
    run_in_process(straight, optimizer="sam", steps=6, track_every=3)
    original_measure, original_fsync = train.measure_record, os.fsync
    count = {"armed": False, "calls": 0}

    def measure(*args, **kwargs):
        count["armed"] = count["armed"] or kwargs["step"] == 3
        return original_measure(*args, **kwargs)

    def fsync(fd):
        if count["armed"]:
            count["calls"] += 1
            if count["calls"] == failing_fsync:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original_fsync(fd)

    monkeypatch.setattr(train, "measure_record", measure)
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    args = ["run", "--optimizer", "sam", "--out", str(out), "--quiet",
            *tiny_cli_args(steps=6, track_every=3)]
    assert main(args) == 2
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"samhess: error: No space left on device: {re.escape(str(out))}/\S+",
                        line), line
    monkeypatch.setattr(os, "fsync", original_fsync)
    monkeypatch.setattr(train, "measure_record", original_measure)
    from samhess.experiments.ownership import OwnedFiles

    owned = OwnedFiles(out)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "timing.json"):
        assert owned.owns(name), name
    load_checkpoint(out / "checkpoint.pt")
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    assert main([*args, "--resume"]) == 0
    for name in ("metrics.jsonl", "summary.json", "report.md", "analysis/analysis.json"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_two_runs_of_one_configuration_write_identical_reports(tiny_run, tmp_path):
    again = tmp_path / "again"
    run_in_process(again, optimizer="sam-ire")
    names = ["config.json", "summary.json", "report.md", "report.html",
             *(f"plots/{p.name}" for p in (tiny_run / "plots").iterdir())]
    assert len(names) == 4 + len(REPORT_FIGURES) + 1  # every figure, and figures.json
    for name in names:
        assert (again / name).read_bytes() == (tiny_run / name).read_bytes(), name
    # Only timing.json holds wall-clock time.
    assert "seconds" in (again / "timing.json").read_text()
    assert "seconds" not in (again / "summary.json").read_text()


@pytest.mark.slow
def test_resume_after_sigint_equals_a_straight_run(tmp_path):
    flags = {**TINY_RUN_FLAGS, "steps": 24, "track_every": 2, "checkpoint_every": 4}
    straight = tmp_path / "straight"
    run_in_process(straight, **flags, optimizer="sam-ire")
    out = tmp_path / "stopped"
    args = [sys.executable, "-m", "samhess", "run", "--optimizer", "sam-ire", "--out",
            str(out), "--quiet", *tiny_cli_args(**flags)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip() == "samhess: interrupted (continue with --resume)"
    assert not (out / ".samhess.lock").exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
