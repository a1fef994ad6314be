"""Every mistake a user can make is one line on stderr and exit status 2, never a traceback.

The process-level cases run ``python -m samhess`` in a subprocess, since a traceback printed by
the interpreter would escape an in-process check; the rest call :func:`samhess.cli.main`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from samhess.cli import main
from samhess.errors import UsageError

from .conftest import TINY_RUN_FLAGS, tiny_cli_args



def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAMHESS_DEBUG"}
    return subprocess.run([sys.executable, "-m", "samhess", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("samhess")
    assert fragment in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--optimizer", "adam"], "--optimizer 'adam' is invalid: must be one of sgd"),
        (["run", "--optimizer", "sgd", "--steps", "0"], "--steps 0 is invalid: must be >= 1"),
        (["run", "--optimizer", "sgd", "--lr", "fast"], "argument --lr: invalid float value"),
        (["run", "--optimizer", "sgd", "--dataset", "imagenet"], "--dataset 'imagenet' is invalid"),
        (["run", "--optimizer", "sgd", "--model", "gpt"], "--model 'gpt' is invalid"),
        (["compare", "--optimizers", "sgd,lion"], "--optimizers 'lion' is invalid"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run"], "the following argument is required: --optimizer"),
        (["run", "--optimizer", "sgd", "--model", "transformer", "--steps", "1"],
         "model 'transformer' does not fit dataset 'digits'"),
        (["run", "--optimizer", "sgd", "--batch-size", "5000"], "--batch-size 5000 is invalid"),
        (["run", "--optimizer", "sgd", "--threads", "0"], "--threads 0 is invalid"),
        (["analyze", "nowhere"], "nowhere holds no run"),
        (["report", "nowhere"], "nowhere is not a directory"),
    ],
)
def test_usage_errors_in_process(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMHESS_DEBUG", raising=False)
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_config_file_error_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("optimizer = 'sgd'\nsteps = 'many'\n")
    assert main(["run", "--config", "bad.toml"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("samhess: error: config file: steps = 'many' has the wrong type: "
                           "expected an integer")


def test_unknown_optimizer_exits_2_in_a_process(tmp_path):
    assert_one_line_error(run_cli(["run", "--optimizer", "adam"], tmp_path),
                          "--optimizer 'adam' is invalid")


def test_missing_data_files_exit_2(tmp_path):
    result = run_cli(["run", "--optimizer", "sgd", "--dataset", "cifar10", "--data-dir",
                      str(tmp_path / "none"), *tiny_cli_args()], tmp_path)
    assert_one_line_error(result, "cifar")
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_exits_2(tiny_run, tmp_path):
    result = run_cli(["run", "--optimizer", "sam-ire", "--out", str(tiny_run), *tiny_cli_args()],
                     tmp_path)
    assert_one_line_error(result, "already holds a run; pass --resume to continue it or --force")


def test_resuming_a_different_run_is_refused(tiny_run, tmp_path, capsys):
    assert main(["run", "--optimizer", "sam", "--out", str(tiny_run), "--resume",
                 *tiny_cli_args()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("it holds a different run (optimizer = 'sam-ire' there, 'sam' now); "
                        "use --force to replace it or another --out")
    assert main(["run", "--optimizer", "sam-ire", "--out", str(tiny_run), "--resume", "--force",
                 *tiny_cli_args()]) == 2
    assert "contradict" in capsys.readouterr().err


def test_resuming_a_different_comparison_is_refused(tmp_path, capsys):
    from samhess.experiments.compare import _claim_compare_dir
    from samhess.experiments.config import build_compare_config

    out = tmp_path / "cmp"
    task = {**TINY_RUN_FLAGS, "steps": 4, "track_every": 2}
    _claim_compare_dir(out, build_compare_config({}, {"optimizers": "sgd,sam", "seeds": 2,
                                                      **task}), "fresh")
    stored = (out / "compare.json").read_bytes()
    for changed, difference in ((["--seeds", "3", *tiny_cli_args(steps=4, track_every=2)],
                                 "seeds = 2 there, 3 now"),
                                (["--seeds", "2", *tiny_cli_args(steps=5, track_every=2)],
                                 "steps = 4 there, 5 now")):
        assert main(["compare", "--out", str(out), "--resume", "--optimizers", "sgd,sam",
                     "--quiet", *changed]) == 2
        assert capsys.readouterr().err.strip() == (
            f"samhess: error: cannot resume {out}: it holds a different comparison "
            f"({difference}); use --force or another --out")
    assert (out / "compare.json").read_bytes() == stored


def test_corrupt_checkpoint_exits_2(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    result = run_cli(["run", "--optimizer", "sam-ire", "--out", str(copy), "--resume",
                      *tiny_cli_args()], tmp_path)
    assert_one_line_error(result, "checkpoint.pt is corrupt")


def _synthetic_mlp_parameters() -> int:
    from samhess.experiments.data import load_dataset
    from samhess.experiments.models import build_model

    model = build_model("mlp", load_dataset("synthetic"), seed=0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_top_k_beyond_the_model_fails_before_the_directory_is_claimed(tmp_path, capsys):
    args = ["run", "--optimizer", "sgd", "--dataset", "synthetic", "--quiet", *tiny_cli_args()]
    dim = _synthetic_mlp_parameters()
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for out in (absent, empty):
        assert main([*args, "--top-k", str(dim + 23), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"samhess: error: --top-k {dim + 23} is invalid: it must be smaller than the number "
            f"of trainable parameters of the 'mlp' model, {dim}")
    assert not absent.exists() and list(empty.iterdir()) == []
    # The corrected command then runs in the same directory.
    assert main([*args, "--out", str(absent)]) == 0
    assert len((absent / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_run_failing_before_its_first_record_takes_back_its_files(tmp_path, monkeypatch,
                                                                    capsys):
    import samhess.experiments.train as train

    def fail(*args, **kwargs):
        raise UsageError("the first record failed")

    monkeypatch.setattr(train, "measure_record", fail)
    args = ["run", "--optimizer", "sgd", "--quiet", *tiny_cli_args()]
    absent, used = tmp_path / "absent", tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("the user's")
    for out in (absent, used):
        assert main([*args, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == "samhess: error: the first record failed"
    assert not absent.exists()
    assert [p.name for p in used.iterdir()] == ["notes.txt"]


def test_a_comparison_failing_at_its_first_record_leaves_no_directory(tmp_path, monkeypatch,
                                                                     capsys):
    import samhess.experiments.train as train

    def fail(*args, **kwargs):
        raise UsageError("the first record failed")

    monkeypatch.setattr(train, "measure_record", fail)
    out = tmp_path / "cmp"
    assert main(["compare", "--optimizers", "sgd,sam", "--seeds", "1", "--out", str(out),
                 "--quiet", *tiny_cli_args()]) == 2
    assert not out.exists()


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "text"])
def test_file_data_sets_without_data_dir_name_the_flag(tmp_path, monkeypatch, capsys, dataset):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--optimizer", "sgd", "--dataset", dataset, *tiny_cli_args()]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"samhess: error: dataset {dataset!r} is read from local files: "
                           "pass --data-dir, ")
    assert "data_dir" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_data_dir_that_does_not_exist_is_named(tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    assert main(["run", "--optimizer", "sgd", "--dataset", "cifar10", "--data-dir", str(nowhere),
                 "--out", str(tmp_path / "out"), *tiny_cli_args()]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: dataset 'cifar10': --data-dir directory does not exist: {nowhere}")
    assert not (tmp_path / "out").exists()


def test_resume_without_a_run_says_a_fresh_one_starts(tmp_path, capsys):
    out = tmp_path / "mistyped"
    assert main(["run", "--optimizer", "sgd", "--out", str(out), "--resume", "--quiet",
                 *tiny_cli_args()]) == 0
    assert capsys.readouterr().err.strip() == (
        f"samhess: no run found in {out}; starting a fresh one")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_out_from_the_config_file_and_the_flag_overriding_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("optimizer: sgd\nout: from-file\n")
    args = ["run", "--config", "run.yaml", "--quiet", *tiny_cli_args(steps=2, track_every=2)]
    assert main(args) == 0
    assert (tmp_path / "from-file" / "metrics.jsonl").exists()
    assert main([*args, "--out", "from-flag"]) == 0
    assert (tmp_path / "from-flag" / "metrics.jsonl").exists()
    (tmp_path / "bad.toml").write_text("optimizer = 'sgd'\nout = 3\n")
    assert main(["run", "--config", "bad.toml"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "config file: out = 3 has the wrong type: expected a directory name")


def _damaged_copy(source: Path, destination: Path, damage) -> Path:
    import shutil

    shutil.copytree(source, destination)
    damage(destination)
    return destination


def _empty_record(run: Path) -> None:
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b"{}\n")


def _config_without_steps(run: Path) -> None:
    import json

    config = json.loads((run / "config.json").read_text())
    del config["steps"], config["dataset"]
    (run / "config.json").write_text(json.dumps(config))


def _provenance_not_a_list(run: Path) -> None:
    import json

    config = json.loads((run / "config.json").read_text())
    config["provenance"] = "elsewhere"
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("command", "damage", "fragment"), [
    ("report", _empty_record, "metrics.jsonl line 4 is not a samhess record (it has no integer "
                              "step)"),
    ("report", _provenance_not_a_list, "config.json: provenance = 'elsewhere' is not a list of "
                                       "environments"),
    ("report", _config_without_steps, "config.json is not a complete run configuration: it "
                                      "lacks dataset, steps"),
    ("analyze", _config_without_steps, "config.json is not a complete run configuration"),
])
def test_damaged_run_files_are_one_line_in_a_process(tiny_run, tmp_path, command, damage,
                                                     fragment):
    copy = _damaged_copy(tiny_run, tmp_path / "copy", damage)
    assert_one_line_error(run_cli([command, str(copy)], tmp_path), fragment)


@pytest.mark.parametrize(("description", "fragment"), [
    ('{"optimizers": [], "seeds": 1, "task": {}}', "optimizers = [] is invalid"),
    ('{"optimizers": ["sgd"], "task": {}}', "is not a comparison description: it lacks seeds"),
    ('{"optimizers": ["sgd"], "seeds": 0, "task": {}}', "seeds = 0 is invalid: must be >= 1"),
    ('[]', "is not a comparison description"),
])
def test_a_malformed_compare_json_is_one_line(tmp_path, capsys, description, fragment):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text(description)
    assert main(["report", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"samhess: error: {out / 'compare.json'}") and fragment in line, line


@pytest.mark.parametrize(("args", "files", "fragment"), [
    (["run", "--optimizer", "sgd", "--threads", "100000"], {},
     "--threads 100000 is invalid: must be between 1 and"),
    (["run", "--config", "dup.yaml"], {"dup.yaml": "optimizer: sgd\nsteps: 5\nsteps: 7\n"},
     "found duplicate key 'steps'"),
    (["run", "--optimizer", "sgd", "--out", ""], {}, "--out '' is invalid: it must name a "
                                                     "directory"),
    (["compare", "--out", " "], {}, "--out ' ' is invalid"),
    (["run", "--config", "rhos.toml"], {"rhos.toml": "optimizer = 'sgd'\n"
                                                     "taylor_rhos = [0.1, inf]\n"},
     "config file: taylor_rhos = [0.1, inf] is invalid: every element must be finite"),
    (["run", "--optimizer", "ire", "--gamma", "0.00001", *tiny_cli_args()], {},
     "gamma 1e-05 selects no coordinate of the n = 6570 coordinates"),
    (["run", "--optimizer", "sgd", "--track-every", "2", "--layer-track-every", "3"], {},
     "--layer-track-every 3 is invalid: it must be a multiple of --track-every 2"),
    (["run", "--optimizer", "msam", "--batch-size", "33", "--msam-m", "4"], {},
     "optimizer 'msam': --msam-m 4 must divide --batch-size 33"),
])
def test_user_mistakes_found_by_the_audit_are_one_line_in_a_process(tmp_path, args, files,
                                                                    fragment):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_cli(args, tmp_path)
    assert_one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # nothing written


def test_a_bug_keeps_its_traceback(tiny_run, monkeypatch):
    """Only samhess's own errors (and OSError on a path) become one line; anything else is a
    bug and propagates."""
    import samhess.experiments.report as report

    def broken(directory):
        raise ValueError("a bug, not a user mistake")

    monkeypatch.setattr(report, "build_report", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["report", str(tiny_run)])
