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

from .conftest import tiny_cli_args



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


def test_corrupt_checkpoint_exits_2(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    result = run_cli(["run", "--optimizer", "sam-ire", "--out", str(copy), "--resume",
                      *tiny_cli_args()], tmp_path)
    assert_one_line_error(result, "checkpoint.pt is corrupt")
