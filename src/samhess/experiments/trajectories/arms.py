"""One trajectory of an experiment (an arm), trained and recorded resumably.

An :class:`Arm` is an optimizer kind from the registry
(:mod:`samhess.experiments.optimizer_kinds`) with its hyperparameters, a batch size, a number
of steps, a starting point (the seeded initialization or the near-interpolating point) and what
it records. :func:`run_arm` trains it as ``samhess run`` trains a model, step by step through
:func:`samhess.experiments.training_step.training_step`, and writes into the arm's directory:

    metrics.jsonl    one record per ``record_every`` steps (and at step 0 and the last step)
    checkpoint.pt    model, optimizer, the measurement's state, IRE's label generator, the step

Nothing in a step draws from a global random number generator: batches are a function of the
seed and the step (:class:`samhess.experiments.task.BatchOrder`), IRE's sampled labels come from
the arm's own generator, saved with the checkpoint. So a trajectory resumed from its last
checkpoint (after ``kill -9`` too) writes the records of one that never stopped; the records
after the checkpoint are cut from ``metrics.jsonl`` and computed again (the kept records must
be exactly the steps the checkpoint expects). Both files are recorded in the arm's own file
list (:mod:`samhess.experiments.ownership`), so that an experiment replaces or removes only
what samhess wrote; the checkpoint's CRCs are checked when it is read.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from samhess.errors import DivergenceError, RunFileError
from samhess.experiments import runfiles
from samhess.experiments.checkpoint import RunState, read_checkpoint
from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.optimizer_kinds import build_optimizer, optimizer_kind
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.progress import RunProgress, progress_enabled
from samhess.experiments.runfiles import CHECKPOINT_FILE, METRICS_FILE
from samhess.experiments.task import LABELS, PROBES, BatchOrder, derived_seed
from samhess.experiments.training_step import StepContext, refresh_ire_mask, training_step
from samhess.experiments.trajectories.measures import Measure
from samhess.experiments.trajectories.problem import Problem

__all__ = ["StartPoint", "Arm", "run_arm", "arm_records", "record_steps"]


class StartPoint(enum.Enum):
    """Where a trajectory starts."""

    #: The problem's model at its seeded initialization.
    INITIALIZATION = "initialization"
    #: The near-interpolating point (:mod:`~samhess.experiments.trajectories.interpolating`).
    INTERPOLATING = "near-interpolating point"


@dataclass(frozen=True)
class Arm:
    """One trajectory.

    Attributes:
        name: its directory under ``arms/`` and its key in ``summary.json``.
        label: its name in reports.
        colour: its colour in the report's figures.
        optimizer: a registered optimizer kind (``sam``, ``sam-ire``, ...).
        hyperparameters: the kind's hyperparameters (``lr``, ``rho``, ...); the kind's defaults
            fill in the rest.
        batch_size: examples per step (the problem's size: full batch).
        steps: training steps.
        record_every: steps between records.
        start: where it starts.
        measure: ``measure(problem, seed)`` -> the :class:`Measure` of its records.
        checkpoint_every: steps between checkpoints (default: at every record).
        mask_on_all_examples: an IRE kind's mask is estimated on all examples (its
            ``refresh_fraction`` 1) rather than on the step's batch (with batch 1 a single
            example's Fisher diagonal would rank the coordinates).
    """

    name: str
    label: str
    colour: str
    optimizer: str
    hyperparameters: Mapping[str, Any]
    batch_size: int
    steps: int
    record_every: int
    start: StartPoint
    measure: Callable[[Problem, int], Measure]
    checkpoint_every: int | None = None
    mask_on_all_examples: bool = False

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written for."""
        return {"name": self.name, "optimizer": self.optimizer,
                "hyperparameters": dict(self.hyperparameters), "batch_size": self.batch_size,
                "steps": self.steps, "record_every": self.record_every,
                "start": self.start.value, "mask_on_all_examples": self.mask_on_all_examples}


@dataclass
class _Trajectory:
    """An arm's live objects."""

    arm: Arm
    model: torch.nn.Module
    context: StepContext
    measure: Measure
    state: RunState = field(default_factory=RunState)


def _checkpoint(trajectory: _Trajectory) -> dict[str, Any]:
    return {
        "arm": trajectory.arm.identity(),
        "model": trajectory.model.state_dict(),
        "optimizer": trajectory.context.optimizer.state_dict(),
        "labels": trajectory.context.label_generator.get_state(),
        "measure": trajectory.measure.state_dict(),
        "state": dataclasses.asdict(trajectory.state),
    }


def _restore(trajectory: _Trajectory, stored: dict[str, Any], path: Path) -> None:
    if stored.get("arm") != trajectory.arm.identity():
        raise RunFileError(f"checkpoint {path} belongs to a different trajectory; start the "
                           "experiment again with --force")
    try:
        trajectory.model.load_state_dict(stored["model"])
        trajectory.context.optimizer.load_state_dict(stored["optimizer"])
        trajectory.context.label_generator.set_state(stored["labels"])
        trajectory.measure.load_state_dict(stored["measure"])
        trajectory.state = RunState(**stored["state"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise runfiles.corrupt_checkpoint(path, exc) from None


def run_arm(arm: Arm, directory: Path, problem: Problem,
            start_state: Callable[[StartPoint], Mapping[str, torch.Tensor]], *, seed: int,
            resume: bool, quiet: bool = False, desc: str = "") -> None:
    """Train and record ``arm`` into ``directory``, continuing its checkpoint if ``resume``.

    Args:
        arm: the trajectory.
        directory: its directory (created).
        problem: the problem it trains on.
        start_state: ``start_state(arm.start)`` -> the model state it starts from (called only
            for a trajectory that starts afresh).
        seed: the experiment's seed (batch order, estimators, IRE's labels).
        resume: continue from ``directory``'s checkpoint when there is one.
        quiet: no progress bar.
        desc: the progress bar's label.

    Raises:
        RunFileError: a checkpoint of another trajectory or a damaged one, or a log that does
            not hold the records the checkpoint expects.
        DivergenceError: the loss is not finite.
    """
    log = MetricsLog(directory / METRICS_FILE)
    owned = OwnedFiles(directory)
    path = directory / CHECKPOINT_FILE
    model = problem.new_model()
    generator = torch.Generator().manual_seed(derived_seed(seed, LABELS))
    context = StepContext(kind=optimizer_kind(arm.optimizer), model=model,
                          optimizer=build_optimizer(arm.optimizer, model, arm.hyperparameters),
                          loss_fn=problem.loss_fn, label_generator=generator)
    if arm.mask_on_all_examples:
        context.optimizer.refresh_fraction = 1.0
    trajectory = _Trajectory(arm, model, context,
                             arm.measure(problem, derived_seed(seed, PROBES) % 2**31))
    stored = read_checkpoint(path) if resume else None
    if stored is not None:
        _restore(trajectory, stored, path)
        log.truncate(trajectory.state.records, record_steps(arm)[:trajectory.state.records])
    else:
        model.load_state_dict(start_state(arm.start))
        if runfiles.is_main_process():
            directory.mkdir(parents=True, exist_ok=True)
        log.reset()
    state = trajectory.state
    order = BatchOrder(*problem.data, arm.batch_size, seed)
    every = arm.checkpoint_every or arm.record_every

    left = [step for step in record_steps(arm)
            if step > state.step or (step == 0 and state.records == 0)]
    bar = RunProgress(desc=desc or arm.label, steps=arm.steps, step=state.step,
                      records=len(left), layer_records=0, analysis=False,
                      enabled=progress_enabled(quiet))

    def record() -> None:
        with bar.phase(f"record at step {state.step}", "record"):
            log.append({"step": state.step, **trajectory.measure(model, state.step)})
        state.records += 1

    def checkpoint() -> None:
        owned.write_bytes(CHECKPOINT_FILE, runfiles.checkpoint_bytes(_checkpoint(trajectory)))

    try:
        if state.step == 0 and state.records == 0:
            record()
            checkpoint()
        model.train()
        while state.step < arm.steps:
            started = time.perf_counter()
            if arm.mask_on_all_examples:
                refresh_ire_mask(context, problem.data)
            loss = training_step(context, order.batch(state.step))
            if not math.isfinite(loss):
                raise DivergenceError(f"the {arm.label} trajectory diverged at step "
                                      f"{state.step} (loss {loss}); lower its learning rate or "
                                      "radius")
            state.step += 1
            bar.trained(time.perf_counter() - started, loss)
            if state.step % arm.record_every == 0 or state.step == arm.steps:
                record()
            if state.step % every == 0 or state.step == arm.steps:
                checkpoint()
    finally:
        bar.close()


def record_steps(arm: Arm) -> list[int]:
    """The steps ``arm`` records at: 0, every ``record_every`` steps, and its last step."""
    return [0, *(step for step in range(1, arm.steps + 1)
                 if step % arm.record_every == 0 or step == arm.steps)]


def arm_records(directory: Path) -> list[dict[str, Any]]:
    """The records of the arm in ``directory``."""
    return MetricsLog(directory / METRICS_FILE).records()
