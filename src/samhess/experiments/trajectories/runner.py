"""``samhess experiment NAME``: claim the directory, train every trajectory, judge, report.

An experiment's directory (default ``runs/<name>``) holds::

    config.json        the experiment's name and settings (what --resume compares against),
                       and where it was computed (:mod:`samhess.experiments.provenance`; its
                       ``from_step`` counts the steps of all trajectories before a resumption)
    arms/<arm>/        one trajectory each: metrics.jsonl and checkpoint.pt
    summary.json       settings, numbers and verdicts
    report.md, report.html, plots/*.png

The directory is handled as ``samhess run`` handles a run's (:mod:`samhess.experiments.rundir`):
one process writes it at a time (its lock, :mod:`samhess.experiments.lock`, held from the first
look to the report, and by ``samhess report``); only files samhess wrote are replaced or removed
(the experiment's file list, and one per trajectory); a directory holding another experiment or
a run is refused unless ``--force`` replaces it, and ``--resume`` continues only the same
experiment with the same settings. The trajectories run one
after another; a resumed experiment skips the finished ones and continues the interrupted one
from its last checkpoint (:func:`samhess.experiments.trajectories.arms.run_arm`), so an
experiment killed at any point and resumed writes the files of one that never stopped.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from samhess.errors import RunFileError, UsageError
from samhess.experiments import runfiles
from samhess.experiments.checkpoint import read_checkpoint
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.ownership import MANIFEST_FILE, OwnedFiles
from samhess.experiments.provenance import environment, run_settings
from samhess.experiments.rundir import (
    EXPERIMENT_KIND, abandon_run_dir, claim_run_dir, holds_a_record, inspect_run_dir,
    note_environment,
)
from samhess.experiments.runfiles import ARMS_DIR, CHECKPOINT_FILE, CONFIG_FILE
from samhess.experiments.trajectories.arms import Arm, StartPoint, arm_records, run_arm
from samhess.experiments.trajectories.experiment import (
    Experiment, ExperimentConfig, Records, resolve_config,
)
from samhess.experiments.trajectories.interpolating import interpolating_point
from samhess.experiments.trajectories.pages import ExperimentReport, write_report
from samhess.experiments.trajectories.problem import Problem, build_problem
from samhess.experiments.trajectories.registry import experiment_named

__all__ = ["default_experiment_dir", "run_trajectory_experiment", "holds_experiment",
           "rebuild_experiment_report"]


def default_experiment_dir(name: str) -> Path:
    """``runs/<name>``."""
    return Path("runs") / name


class _StartStates:
    """The states trajectories start from, each computed (or read from the cache) once."""

    def __init__(self, problem: Problem, config: ExperimentConfig, quiet: bool):
        self.problem, self.config, self.quiet = problem, config, quiet
        self._states: dict[StartPoint, Mapping[str, torch.Tensor]] = {}

    def __call__(self, start: StartPoint) -> Mapping[str, torch.Tensor]:
        if start not in self._states:
            if start is StartPoint.INITIALIZATION:
                self._states[start] = self.problem.new_model().state_dict()
            else:
                self._states[start] = interpolating_point(self.problem, self.config,
                                                          quiet=self.quiet).state
        return self._states[start]


def _problem(config: ExperimentConfig) -> Problem:
    return build_problem(config["examples"], config["width"], config["seed"])


def run_trajectory_experiment(experiment: Experiment, config: ExperimentConfig, out: str | Path,
                              *, resume: bool = False, force: bool = False,
                              quiet: bool = False) -> ExperimentReport:
    """Train every trajectory of ``experiment`` into ``out`` and write its report.

    A new experiment that fails before any trajectory wrote a record removes what it wrote (and
    ``out`` if it created it); with ``resume`` and nothing in ``out`` it starts afresh and says
    so on stderr.

    Raises:
        SamhessError: ``out`` is written by another process or holds something else (or files
            samhess did not write), a checkpoint is damaged, a setting does not fit, or a
            trajectory diverged; the message is one line.
    """
    out = Path(out)
    with run_directory_lock(out, "samhess experiment"):
        decision = inspect_run_dir(out, config, resume=resume, force=force,
                                   kind=EXPERIMENT_KIND)
        problem = _problem(config)
        arms = experiment.arms(config)
        if resume and decision == "fresh":
            print(f"samhess: no experiment found in {out}; starting a fresh one",
                  file=sys.stderr)
        if decision == "replace":
            _remove_trajectories(out)
        claim_run_dir(out, config, decision, kind=EXPERIMENT_KIND)
        steps_done = _steps_done(out, arms) if decision == "continue" else 0
        note_environment(out, environment(torch.device("cpu")), steps_done)
        starts = _StartStates(problem, config, quiet)
        try:
            for index, arm in enumerate(arms, start=1):
                run_arm(arm, out / ARMS_DIR / arm.name, problem, starts, seed=config["seed"],
                        resume=decision == "continue", quiet=quiet,
                        desc=f"{experiment.name} {index}/{len(arms)} {arm.label}")
        except BaseException:
            if decision != "continue" and not any(holds_a_record(out / ARMS_DIR / arm.name)
                                                  for arm in arms):
                _remove_trajectories(out)
                abandon_run_dir(out)
            raise
        records = {arm.name: arm_records(out / ARMS_DIR / arm.name) for arm in arms}
        return _report(out, experiment, config, records)


def _remove_trajectories(out: Path) -> None:
    """Remove samhess's files of every trajectory in ``out/arms`` (each has its own file list),
    then the folders left empty; the user's files stay."""
    for manifest in sorted((out / ARMS_DIR).glob(f"*/{MANIFEST_FILE}")):
        OwnedFiles(manifest.parent).remove_owned()
        with contextlib.suppress(OSError):  # a folder holding anything else stays
            manifest.parent.rmdir()
    with contextlib.suppress(OSError):
        (out / ARMS_DIR).rmdir()


def _steps_done(out: Path, arms: Sequence[Arm]) -> int:
    """The steps the trajectories' checkpoints hold, all trajectories together: where a resumed
    experiment's provenance says the new environment starts."""
    done = 0
    for arm in arms:
        stored = read_checkpoint(out / ARMS_DIR / arm.name / CHECKPOINT_FILE)
        done += 0 if stored is None else int(stored.get("state", {}).get("step", 0))
    return done


def _report(out: Path, experiment: Experiment, config: ExperimentConfig,
            records: Records) -> ExperimentReport:
    return write_report(out, experiment, config, experiment.findings(config, records))


def _stored_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_FILE
    if not path.exists():
        return None
    stored = runfiles.read_json(path)
    if not isinstance(stored, dict) or "experiment" not in stored:
        return None
    return run_settings(stored)


def holds_experiment(directory: str | Path) -> bool:
    """Whether ``directory`` holds an experiment's files (its ``config.json`` names one)."""
    return _stored_config(Path(directory)) is not None


def rebuild_experiment_report(directory: str | Path) -> ExperimentReport:
    """Rebuild the report of the experiment in ``directory`` from its records, under the
    directory's lock.

    Raises:
        RunFileError: ``directory`` holds no experiment, or its ``config.json`` is malformed.
        UsageError: its trajectories are unfinished.
        RunDirectoryError: another process writes the directory, or a file the report would
            replace is not samhess's.
    """
    directory = Path(directory)
    with run_directory_lock(directory, "samhess report"):
        stored = _stored_config(directory)
        if stored is None:
            raise RunFileError(f"{directory} holds no experiment")
        stored = dict(stored)
        try:
            experiment = experiment_named(stored.pop("experiment"))
            config = resolve_config(experiment, {}, stored, source="config.json")
        except UsageError as exc:
            # the message names the key as "config.json: key = value ..."
            raise RunFileError(f"{directory}{os.sep}{exc}") from None
        records = {}
        for arm in experiment.arms(config):
            records[arm.name] = arm_records(directory / ARMS_DIR / arm.name)
            if not records[arm.name] or records[arm.name][-1]["step"] != arm.steps:
                raise UsageError(f"{directory} has unfinished trajectories; finish them with "
                                 f"samhess experiment {experiment.name} --resume --out "
                                 f"{directory}")
        return _report(directory, experiment, config, records)
