"""``samhess run``: the files it writes, reproducibility, and resuming after ``kill -9``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from samhess.cli import main
from samhess.experiments.report_summary import SUMMARY_KEYS
from samhess.experiments.tracking import RECORD_KEYS
from samhess.experiments.task import epoch_permutation

from .conftest import TINY_RUN_FLAGS, run_in_process, sigkill_when, tiny_cli_args


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_the_documented_files(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["optimizer"] == "sam-ire" and config["model"] == "mlp" and config["lr"] == 0.1
    # per-layer curvature every 2 records by default: steps 0 and 6 of a run tracked every 3
    assert config["layer_track_every"] == 2 * TINY_RUN_FLAGS["track_every"]

    records = read_records(tiny_run)
    assert [r["step"] for r in records] == [0, 3, 6]
    assert [r["layer_curvature"] is not None for r in records] == [True, False, True]
    for record in records:
        assert tuple(record) == RECORD_KEYS
        assert len(record["eigenvalues"]) == TINY_RUN_FLAGS["top_k"]
        assert record["lambda_max"] == record["eigenvalues"][0]
        assert record["eigenvalues"] == sorted(record["eigenvalues"], reverse=True)
        assert record["hessian_trace_stderr"] >= 0
        assert 0.0 <= record["test_accuracy"] <= 1.0
    assert records[0]["batch_loss"] is None and records[1]["batch_loss"] > 0

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["final_train_loss"] == {"mean": records[-1]["train_loss"], "std": 0.0}
    ratios = sorted(r["gain_ratio"] for r in records[1:])
    assert summary["sharp_flat_gain_ratio"]["mean"] == pytest.approx(sum(ratios) / 2, rel=1e-12)
    timing = json.loads((tiny_run / "timing.json").read_text())
    assert timing["steps"] == 6 and timing["seconds_per_step"] > 0
    assert "seconds_per_step" not in summary  # wall clock stays in timing.json
    assert summary["complete"] is True

    analysis = json.loads((tiny_run / "analysis" / "analysis.json").read_text())
    expected = {"gains", "sharp_flat", "taylor", "spectral_density", "ire_mask_quality",
                "landscape"}
    assert expected <= set(analysis)
    assert analysis["step"] == 6
    points = config["landscape_points"]
    assert len(analysis["landscape"]["plane"]) == points == 21
    assert analysis["landscape"]["evaluations"] == points * points + 2 * points + 1
    for name in ("curves.png", "dynamics.png", "eigenvalues.png", "layers.png", "gains.png",
                 "taylor.png", "spectrum.png", "landscape.png"):
        assert (tiny_run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "checkpoint.pt").exists()
    assert (tiny_run / "report.html").exists() and (tiny_run / "report.md").exists()


def test_same_seed_gives_identical_files(tiny_run, tmp_path):
    run_in_process(tmp_path / "again", optimizer="sam-ire")
    for name in ("metrics.jsonl", "config.json", "analysis/analysis.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_run / name).read_bytes(), name


def test_analyze_recomputes_the_final_analysis_from_the_checkpoint(tiny_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "analysis" / "analysis.json").unlink()
    assert main(["analyze", str(copy)]) == 0
    assert "sharp/flat gain ratio" in capsys.readouterr().out
    for name in ("gains.png", "sharp_flat.png", "taylor.png", "spectral_density.png",
                 "landscape.png"):
        assert (copy / "analysis" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The checkpoint restores model, optimizer and IRE mask exactly: the same numbers result.
    assert ((copy / "analysis" / "analysis.json").read_bytes()
            == (tiny_run / "analysis" / "analysis.json").read_bytes())


def test_batch_order_depends_on_seed_and_epoch_only():
    first = epoch_permutation(3, 1, 50)
    assert (first == epoch_permutation(3, 1, 50)).all()
    assert sorted(first.tolist()) == list(range(50))
    assert not (first == epoch_permutation(3, 2, 50)).all()
    assert not (first == epoch_permutation(4, 1, 50)).all()


def test_resume_of_a_finished_run_keeps_its_metrics(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    result = run_in_process(copy, optimizer="sam-ire", resume=True)
    assert result.resumed_from == 6
    assert (copy / "metrics.jsonl").read_bytes() == (tiny_run / "metrics.jsonl").read_bytes()


KILL_FLAGS = {**TINY_RUN_FLAGS, "steps": 24, "track_every": 2, "checkpoint_every": 4}


def test_resume_after_sigkill_equals_a_straight_run(tmp_path):
    straight = tmp_path / "straight"
    run_in_process(straight, **KILL_FLAGS, optimizer="sam-ire")

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "samhess", "run", "--optimizer", "sam-ire", "--out",
            str(killed), "--quiet", *tiny_cli_args(**KILL_FLAGS)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "metrics.jsonl"
    # Kill once a checkpoint past step 0 exists, i.e. mid-way with a resumable state on disk.
    sigkill_when(process, lambda: (killed / "checkpoint.pt").exists() and metrics.exists()
                 and metrics.read_bytes().count(b"\n") >= 4)
    interrupted = read_records(killed) if (killed / "metrics.jsonl").exists() else []
    assert len(interrupted) < 13

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from step" in resumed.stdout
    assert (killed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert len(read_records(killed)) == 13


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    run_in_process(tmp_path / "tb", optimizer="sgd", steps=3, tensorboard=True)
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    lambda_max = [event.value for event in accumulator.Scalars("lambda_max")]
    assert lambda_max == pytest.approx([r["lambda_max"] for r in read_records(tmp_path / "tb")])


def test_force_replaces_a_run(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "notes.txt").write_text("mine")
    run_in_process(copy, optimizer="sgd", steps=3, force=True)
    assert [r["step"] for r in read_records(copy)] == [0, 3]
    assert (copy / "notes.txt").read_text() == "mine"


def test_config_json_records_where_the_run_was_computed(tiny_run):
    import platform

    import numpy
    import torch

    import samhess
    from samhess.experiments.config import RunConfig

    stored = json.loads((tiny_run / "config.json").read_text())
    (environment,) = stored["provenance"]
    assert environment["samhess"] == samhess.__version__
    assert environment["torch"] == torch.__version__
    assert environment["numpy"] == numpy.__version__
    assert environment["python"] == platform.python_version()
    assert environment["device"].startswith("cpu: ")
    assert environment["torch_threads"] == 1 and environment["processes"] == 1
    assert environment["from_step"] == 0
    checkout = Path(samhess.__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert environment["git_commit"] == head
        assert isinstance(environment["git_modified"], bool)
    else:
        assert environment["git_commit"] is None
    # the provenance is no part of the configuration read back
    assert RunConfig.from_dict(stored).to_dict() == {
        key: value for key, value in stored.items() if key != "provenance"}


def test_resume_in_another_environment_continues_and_records_it(tmp_path, monkeypatch):
    """A run started in another environment (another torch version) resumes, ends with the
    metrics of a straight run, records the environment it continued in, and its config.json,
    rewritten for that, stays samhess's own (the manifest holds its new content)."""
    import torch

    import samhess.experiments.train as train
    from samhess.experiments.ownership import OwnedFiles

    straight = tmp_path / "straight"
    run_in_process(straight, **KILL_FLAGS, optimizer="sgd")
    resumed = tmp_path / "resumed"
    here, measure = train.environment, train.measure_record

    def interrupted_after_the_step_12_checkpoint(*args, **kwargs):
        if kwargs["step"] == 14:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "environment",
                      lambda *args: {**here(*args), "torch": "1.0.0-elsewhere"})
        patch.setattr(train, "measure_record", interrupted_after_the_step_12_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            run_in_process(resumed, **KILL_FLAGS, optimizer="sgd")
    config = json.loads((resumed / "config.json").read_text())
    assert [(e["torch"], e["from_step"]) for e in config["provenance"]] == [
        ("1.0.0-elsewhere", 0)]
    result = run_in_process(resumed, **KILL_FLAGS, optimizer="sgd", resume=True)
    assert result.resumed_from == 12
    assert (resumed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    entries = json.loads((resumed / "config.json").read_text())["provenance"]
    assert [entry["torch"] for entry in entries] == ["1.0.0-elsewhere", torch.__version__]
    assert [entry["from_step"] for entry in entries] == [0, 12]
    owned = OwnedFiles(resumed)
    assert owned.owns("config.json") and owned.foreign(["config.json"]) == []
    # resuming again in the same environment adds nothing
    run_in_process(resumed, **KILL_FLAGS, optimizer="sgd", resume=True)
    assert json.loads((resumed / "config.json").read_text())["provenance"] == entries
