"""``samhess experiment``: shortened runs of every experiment, their files and numbers, resuming
after ``kill -9``, and the directory rules ``samhess run`` follows."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from samhess.cli import main
from samhess.experiments.ownership import MANIFEST_FILE, OwnedFiles
from samhess.experiments.threads import torch_threads
from samhess.experiments.trajectories import EXPERIMENTS, experiment_named, resolve_config
from samhess.experiments.trajectories import arms as arms_module
from samhess.experiments.trajectories.registry import experiments_markdown
from samhess.experiments.trajectories.runner import run_trajectory_experiment

from .conftest import sigkill_when

#: A problem that takes a second: 16 digits, width 4, a loose starting point.
TINY = {"examples": 16, "width": 4, "seed": 1}
TINY_START = {"interpolation_lr": 0.5, "interpolation_loss": 5e-2}
SHORT = {
    "sharpness-regularizers": {**TINY, **TINY_START, "steps": 24, "record_every": 8},
    "bouncing": {**TINY, **TINY_START, "steps": 30, "eigenvector_every": 4,
                 "checkpoint_every": 10},
    "edge-of-stability": {**TINY, "steps": 40, "lrs": [0.5, 1.5], "record_every": 5},
    "ire-manifold": {**TINY, **TINY_START, "steps": 30, "record_every": 5, "gamma": 0.5},
    "m-sharpness": {**TINY, "steps": 30, "batch_size": 16, "micro_batch_sizes": [1, 4, 16],
                    "record_every": 5},
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("points")


def run_short(name: str, out: Path, cache_dir: Path, *, resume: bool = False,
              force: bool = False, **changes):
    experiment = experiment_named(name)
    values = {**SHORT[name], **changes}
    if any(s.name == "cache_dir" for s in experiment.settings):
        values["cache_dir"] = str(cache_dir)
    config = resolve_config(experiment, {}, values)
    with torch_threads(1):
        return run_trajectory_experiment(experiment, config, out, resume=resume, force=force,
                                         quiet=True)


def records(out: Path, arm: str) -> list[dict]:
    directory = out / "arms" / arm if (out / "arms").exists() else out / arm
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file an experiment writes whose bytes must not depend on interruptions (not the
    checkpoints, nor the file lists, which record each version a session wrote)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name not in ("checkpoint.pt", MANIFEST_FILE):
            files[str(path.relative_to(out))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """``finished(name)``: the directory and report of a shortened experiment run to the end
    (run once per module, on first use)."""
    root = tmp_path_factory.mktemp("experiments")
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = (root / name, run_short(name, root / name, cache_dir))
        return done[name]

    return get


def test_every_registered_experiment_has_a_shortened_run():
    assert set(SHORT) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", [
    *(pytest.param(name, marks=pytest.mark.slow) for name in SHORT if name != "edge-of-stability"),
    "edge-of-stability",  # from initialization, no starting point to compute: seconds
])
def test_each_writes_its_documented_files(finished, name):
    out, report = finished(name)
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and "cache_dir" not in config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == name
    assert summary["verdicts"] == [c.to_dict() for c in report.findings.claims]
    assert all(v["holds"] in (True, False, None) for v in summary["verdicts"])
    text = (out / "report.md").read_text()
    for claim in report.findings.claims:
        assert f"**{claim.verdict}**: {claim.claim}. {claim.evidence}." in text
    for figure in report.findings.figures:
        assert (out / "plots" / figure.filename).read_bytes() == figure.png
    for arm in experiment_named(name).arms(resolve_config(experiment_named(name), {},
                                                          SHORT[name])):
        steps = [r["step"] for r in records(out, arm.name)]
        assert steps[0] == 0 and steps[-1] == arm.steps
        assert steps == sorted(set(steps))


@pytest.mark.slow
def test_sharpness_drops_are_those_of_the_records(finished):
    out, report = finished("sharpness-regularizers")
    for arm in ("sam", "one-sam", "usam", "gd", "sgd"):
        first, last = records(out, arm)[0], records(out, arm)[-1]
        entry = report.summary["results"]["arms"][arm]
        assert entry["lambda_max"]["drop"] == pytest.approx(
            1 - last["lambda_max"] / first["lambda_max"], rel=1e-12)
        assert entry["hessian_trace"]["drop"] == pytest.approx(
            1 - last["hessian_trace"] / first["hessian_trace"], rel=1e-12)
    # every trajectory starts from the same near-interpolating point
    starts = {json.dumps(records(out, arm)[0]) for arm in ("sam", "one-sam", "gd")}
    assert len(starts) == 1
    assert records(out, "gd")[0]["train_loss"] <= TINY_START["interpolation_loss"]


@pytest.mark.slow
def test_bouncing_statistics_are_those_of_the_records(finished):
    out, report = finished("bouncing")
    settled = [r for r in records(out, "sam") if r["step"] >= 15]
    signs = [math.copysign(1, r["gradient_on_top_eigenvector"]) for r in settled]
    flips = sum(a != b for a, b in zip(signs, signs[1:])) / (len(signs) - 1)
    results = report.summary["results"]
    assert results["flip_rate"] == pytest.approx(flips)
    assert results["median_alignment"] == pytest.approx(statistics.median(
        abs(r["gradient_on_top_eigenvector"]) / r["grad_norm"] for r in settled))
    assert report.findings.claims[0].holds == (flips >= 0.9)


def test_edge_medians_are_those_of_the_records(finished):
    out, report = finished("edge-of-stability")
    for lr in (0.5, 1.5):
        gd = [r for r in records(out, f"gd-lr{lr:g}") if r["step"] >= 20]
        sam = [r for r in records(out, f"sam-lr{lr:g}") if r["step"] >= 20]
        entry = report.summary["results"][f"lr {lr:g}"]
        assert entry["gd"]["median_stability"] == pytest.approx(
            statistics.median(lr * r["lambda_max"] / 2 for r in gd))
        assert entry["sam"]["median_stability"] == pytest.approx(statistics.median(
            lr * r["lambda_max"] * (1 + 0.05 * r["lambda_max"] / r["grad_norm"]) / 2
            for r in sam))


@pytest.mark.slow
def test_ire_speedups_are_those_of_the_records(finished):
    out, report = finished("ire-manifold")
    sam, ire = records(out, "sam"), records(out, "sam-ire")
    assert sam[0] == ire[0]
    for level in report.summary["results"]["levels"]:
        for key, trajectory in (("sam_step", sam), ("sam_ire_step", ire)):
            if level[key] is None:
                assert min(r["hessian_trace"] for r in trajectory) > level["level"]
                continue
            before = [r for r in trajectory if r["step"] < level[key]]
            after = [r for r in trajectory if r["step"] >= level[key]]
            assert all(r["hessian_trace"] > level["level"] for r in before)
            assert after[0]["hessian_trace"] <= level["level"] + 1e-9


@pytest.mark.slow
def test_m_sharpness_compares_the_records_at_their_matched_loss(finished, tmp_path):
    out, report = finished("m-sharpness")
    runs = {size: records(out, f"m-{size}") for size in (1, 4, 16)}
    loss = max(min(r["train_loss"] for r in run) for run in runs.values())
    results = report.summary["results"]
    assert results["matched_train_loss"] == loss
    for size, run in runs.items():
        entry = results["trajectories"][f"m-{size}"]
        after = next(i for i, r in enumerate(run) if r["train_loss"] <= loss)
        low, high = run[after - 1], run[after]
        for key in ("lambda_max", "hessian_trace"):
            value = entry[f"{key}_at_matched_loss"]
            assert min(low[key], high[key]) - 1e-12 <= value <= max(low[key], high[key]) + 1e-12
    # one micro-batch of the whole batch is SAM: the trajectory of the registry's sam kind
    from samhess.experiments.trajectories.arms import Arm, StartPoint, run_arm
    from samhess.experiments.trajectories.measures import CurvatureMeasure
    from samhess.experiments.trajectories.problem import build_problem

    problem = build_problem(16, 4, 1)
    sam = Arm("sam", "SAM", "#000000", "sam", {"lr": 0.2, "rho": 0.05}, 16, 30, 5,
              StartPoint.INITIALIZATION, CurvatureMeasure)
    with torch_threads(1):
        run_arm(sam, tmp_path / "sam", problem, lambda start: problem.new_model().state_dict(),
                seed=1, resume=False, quiet=True)
    for mine, theirs in zip(records(out, "m-16"), records(tmp_path, "sam")):
        assert mine == pytest.approx(theirs, rel=1e-9)


@pytest.mark.slow
def test_report_rebuilds_byte_identically(finished, tmp_path, capsys):
    import shutil

    out, _ = finished("bouncing")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("summary.json", "report.md", "report.html"):
        (copy / name).unlink()
    shutil.rmtree(copy / "plots")
    assert main(["report", str(copy)]) == 0
    assert output_files(copy) == output_files(out)
    assert "Report:" in capsys.readouterr().out


@pytest.mark.slow
def test_a_finished_experiment_resumes_to_the_same_files(finished, tmp_path, cache_dir):
    import shutil

    out, _ = finished("sharpness-regularizers")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    run_short("sharpness-regularizers", copy, cache_dir, resume=True)
    assert output_files(copy) == output_files(out)


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_to_a_straight_run(finished, tmp_path, cache_dir,
                                                           monkeypatch):
    """Interrupted in its second trajectory (SAM-IRE: IRE's mask and label generator), between
    checkpoints, then resumed: the files of a run that never stopped."""
    straight, _ = finished("ire-manifold")
    out = tmp_path / "interrupted"
    step = arms_module.training_step
    calls = {"n": 0}

    def interrupting(context, batch):
        calls["n"] += 1
        if calls["n"] == 30 + 18:  # step 18 of the second trajectory, past its checkpoint at 15
            raise KeyboardInterrupt
        return step(context, batch)

    monkeypatch.setattr(arms_module, "training_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_short("ire-manifold", out, cache_dir)
    assert len(records(out, "sam-ire")) == 4  # steps 0, 5, 10, 15
    monkeypatch.setattr(arms_module, "training_step", step)
    run_short("ire-manifold", out, cache_dir, resume=True)
    assert output_files(out) == output_files(straight)


@pytest.mark.slow
def test_resume_after_sigkill_equals_a_straight_run(tmp_path, cache_dir):
    changes = {"steps": 600, "checkpoint_every": 40}
    straight = tmp_path / "straight"
    run_short("bouncing", straight, cache_dir, **changes)
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "samhess", "experiment", "bouncing", "--out", str(killed),
            "--quiet", "--cache-dir", str(cache_dir)]
    for key, value in {**SHORT["bouncing"], **changes}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "arms" / "sam" / "metrics.jsonl"
    # Kill once a checkpoint past step 0 is on disk and records after it are being written.
    sigkill_when(process, lambda: metrics.exists() and metrics.read_bytes().count(b"\n") >= 50)
    assert metrics.read_bytes().count(b"\n") < 601
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert output_files(killed) == output_files(straight)


@pytest.mark.slow
def test_the_directory_rules_of_samhess_run(finished, tmp_path, cache_dir):
    out, _ = finished("edge-of-stability")
    with pytest.raises(ValueError, match="already holds an experiment; pass --resume"):
        run_short("edge-of-stability", out, cache_dir)
    with pytest.raises(ValueError, match=r"cannot resume .* \(steps = 40 there, 41 now\)"):
        run_short("edge-of-stability", out, cache_dir, resume=True, steps=41)
    with pytest.raises(ValueError, match="cannot resume .* it holds a different experiment"):
        run_short("bouncing", out, cache_dir, resume=True)
    # a changed cache directory is no change of the experiment
    fresh = tmp_path / "fresh"
    run_short("bouncing", fresh, cache_dir)
    run_short("bouncing", fresh, tmp_path / "elsewhere", resume=True)
    assert not (tmp_path / "elsewhere").exists()
    # --force replaces another experiment's files, trajectories included
    run_short("edge-of-stability", fresh, cache_dir, force=True)
    assert sorted(p.name for p in (fresh / "arms").iterdir()) == [
        "gd-lr0.5", "gd-lr1.5", "sam-lr0.5", "sam-lr1.5"]


def _cli_args(name: str, out: Path, **changes) -> list[str]:
    args = ["experiment", name, "--out", str(out), "--quiet"]
    for key, value in {**SHORT[name], **changes}.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        args += [f"--{key.replace('_', '-')}", text]
    return args


def test_an_experiment_keeps_to_samhess_s_own_files(finished, tmp_path, capsys):
    """The run directory rules of issue 12 hold for an experiment: a user's file under a name
    the experiment writes is refused, not overwritten; --force removes samhess's files only,
    trajectories included; a run is refused in an experiment's directory; the report refuses
    to overwrite a figure the user changed."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "report.md").write_text("my report")
    assert main(_cli_args("edge-of-stability", fresh)) == 2
    assert "holds report.md, which samhess did not write" in capsys.readouterr().err
    assert [p.name for p in fresh.iterdir()] == ["report.md"]

    out, _ = finished("edge-of-stability")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    owned = OwnedFiles(copy)
    assert owned.kind == "experiment"
    assert all(owned.owns(name) for name in ("config.json", "summary.json", "report.md"))
    assert OwnedFiles(copy / "arms" / "gd-lr0.5").owns("metrics.jsonl")
    (copy / "arms" / "gd-lr0.5" / "notes.txt").write_text("the user's")
    assert main(["run", "--optimizer", "sgd", "--out", str(copy), "--force"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"samhess: error: {copy} holds an experiment, not a run; choose another --out")
    assert main([*_cli_args("edge-of-stability", copy, lrs=[0.5]), "--force"]) == 0
    assert sorted(p.name for p in (copy / "arms").iterdir()) == ["gd-lr0.5", "sam-lr0.5"]
    assert sorted(p.name for p in (copy / "arms" / "gd-lr0.5").iterdir()) == [
        MANIFEST_FILE, "checkpoint.pt", "metrics.jsonl", "notes.txt"]
    assert not (copy / "arms" / "sam-lr1.5").exists()
    figure = next((copy / "plots").iterdir())
    figure.write_bytes(b"the user's figure")
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    assert "was not written by samhess" in capsys.readouterr().err
    assert figure.read_bytes() == b"the user's figure"


def test_a_new_experiment_that_fails_before_its_first_record_leaves_nothing(tmp_path,
                                                                           cache_dir):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="did not reach --interpolation-loss"):
        run_short("bouncing", out, tmp_path / "points", interpolation_max_steps=2)
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["experiment", "sharpness"], "invalid choice: 'sharpness'"),
    (["experiment"], "the following arguments are required: NAME"),
    (["experiment", "bouncing", "--steps", "0"], "--steps 0 is invalid: must be >= 1"),
    (["experiment", "bouncing", "--kappa", "1"], "unrecognized arguments: --kappa"),
    (["experiment", "edge-of-stability", "--lrs", "0.5,-1"], "every element must be > 0"),
    (["experiment", "ire-manifold", "--examples", "16", "--batch-size", "17"],
     "--batch-size 17 is invalid: it must be at most --examples (16)"),
    (["experiment", "m-sharpness", "--micro-batch-sizes", "1,3"],
     "--micro-batch-sizes 3 is invalid: it must divide --batch-size (128)"),
    (["experiment", "m-sharpness", "--micro-batch-sizes", "1,2.5"], "must be a whole number"),
])
def test_usage_errors_are_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMHESS_DEBUG", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("samhess") and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in EXPERIMENTS)


def test_docs_hold_the_generated_settings_tables():
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert experiments_markdown() in text


def test_a_config_file_sets_an_experiment_and_its_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("steps = 0\n")
    assert main(["experiment", "edge-of-stability", "--config", "bad.toml"]) == 2
    assert "config file: steps = 0 is invalid: must be >= 1" in capsys.readouterr().err
    (tmp_path / "typo.toml").write_text("lr = 0.5\n")
    assert main(["experiment", "edge-of-stability", "--config", "typo.toml"]) == 2
    assert "unknown key 'lr' (did you mean 'lrs'?)" in capsys.readouterr().err
    settings = {**SHORT["edge-of-stability"], "steps": 10, "lrs": [0.5]}
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (tmp_path / "short.toml").write_text("\n".join([*lines, 'out = "from-file"', ""]))
    assert main(["experiment", "edge-of-stability", "--config", "short.toml", "--steps", "5",
                 "--quiet"]) == 0
    stored = json.loads((tmp_path / "from-file" / "config.json").read_text())
    assert stored["steps"] == 5 and stored["lrs"] == [0.5] and stored["width"] == 4
