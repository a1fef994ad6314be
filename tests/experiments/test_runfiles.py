"""Run files: atomic replacement, the metrics log's append/truncate, checkpoint checks."""

from __future__ import annotations

import json

import pytest
import torch

from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.runfiles import (
    dumps_json,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)


def test_atomic_json_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1.5, "b": [1, 2]})
    write_json_atomic(path, {"a": float("nan"), "c": (3, 4)})
    assert json.loads(path.read_text()) == {"a": None, "c": [3, 4]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    plain = tmp_path / "plain.txt"
    plain.write_text("")  # the mode open() gives under this umask
    assert path.stat().st_mode == plain.stat().st_mode


def test_json_text_is_deterministic_and_strict():
    value = {"x": 0.1 + 0.2, "y": float("inf"), "z": torch.tensor([1.0, 2.5])}
    assert dumps_json(value, indent=None) == '{"x":0.30000000000000004,"y":null,"z":[1.0,2.5]}'


def test_metrics_log_truncates_to_complete_records(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.reset()
    for step in range(3):
        log.append({"step": step, "loss": 1.0 / (step + 1)})
    straight = log.path.read_bytes()
    log.append({"step": 3, "loss": 0.25})
    with open(log.path, "ab") as handle:  # a record cut short by a kill
        handle.write(b'{"step": 4, "lo')
    assert [r["step"] for r in log.records()] == [0, 1, 2, 3]
    log.truncate(3)
    assert log.path.read_bytes() == straight
    with pytest.raises(ValueError, match="fewer records than the checkpoint saw"):
        log.truncate(5)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = {"step": 7, "model": {"w": torch.arange(4.0)}, "python": [3, [1, 2], None]}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is corrupt") as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is corrupt (BadZipFile: File is not a zip "
                               "file); remove it and start the run again with --force")
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is corrupt"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)
    with pytest.raises(ValueError, match="is not a samhess checkpoint"):
        load_checkpoint(path)
