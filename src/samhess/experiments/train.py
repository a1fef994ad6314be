"""The tracked training loop: :func:`run_experiment`.

One run trains one model with one optimizer and records, every ``track_every`` steps (and at
steps 0 and ``steps``), the measurements of :mod:`samhess.experiments.tracking`. It is
reproducible and resumable:

* Batch order is a function of (seed, epoch) alone (:mod:`samhess.experiments.task`): the data
  position is the step itself.
* A checkpoint (:mod:`samhess.experiments.checkpoint`), written atomically at every record (or
  every ``checkpoint_every`` steps), holds everything the run's state depends on. ``--resume``
  loads it and cuts ``metrics.jsonl`` back to the records it had seen, so a run interrupted at
  any point, even by ``kill -9``, ends with the metrics file of a run that never stopped.
* Wall-clock time is kept out of ``metrics.jsonl`` (in ``timing.json``), so two runs with one
  seed write identical metrics on CPU.
* One process writes a run directory at a time: the run holds the directory's lock
  (:mod:`samhess.experiments.lock`) from its first look at the directory to its report, and
  writes, replaces and removes only files samhess wrote (:mod:`samhess.experiments.ownership`).
* A run that diverges stops with one line naming the step, the optimizer and the remedy
  (:class:`~samhess.errors.DivergenceError`): at a non-finite loss, at a non-finite gradient
  (SAM and IRE raise on one), or at a record whose losses or curvature are not finite, which is
  then not written.

Under ``torchrun`` (``torch.distributed`` initialized by the command line) the training passes
run through DistributedDataParallel and every rank takes its contiguous shard of each global
batch (:func:`samhess.experiments.training_step.training_step`): with SAM's default global
perturbation, N processes take the steps one process takes on the same batches. Every rank
measures the records (the same numbers); rank 0 alone writes files, and decides, once for all,
what to do with the output directory and what the checkpoint holds
(:func:`samhess.distributed.on_main_process`). A checkpoint records the number of processes, and
training resumes only with the same number.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samhess.distributed import get_world_size, is_main_process, on_main_process
from samhess.errors import DivergenceError, UsageError
from samhess.experiments import runfiles
from samhess.experiments.checkpoint import (
    RunState, make_checkpoint, read_checkpoint, restore_checkpoint,
)
from samhess.experiments.config import record_steps
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.progress import ComparisonProgress, RunProgress, progress_enabled
from samhess.experiments.provenance import environment
from samhess.experiments.rundir import (
    abandon_run_dir, claim_run_dir, holds_a_record, inspect_run_dir, note_environment,
)
from samhess.experiments.runfiles import CHECKPOINT_FILE, METRICS_FILE, TIMING_FILE
from samhess.experiments.task import BatchOrder, Task, build_task
from samhess.experiments.tracking import measure_record
from samhess.experiments.training_step import StepContext, refresh_ire_mask, training_step


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the directory, its summary and the report's path."""

    out: Path
    summary: dict[str, Any]
    report_path: Path
    resumed_from: int | None
    #: Parts of the final analysis that failed, one line each.
    analysis_errors: list[str] = field(default_factory=list)

    def screen_summary(self) -> str:
        """A few lines for the terminal."""
        from samhess.experiments.report import format_run_summary

        return format_run_summary(self.out, self.summary, self.report_path, self.resumed_from,
                                  self.analysis_errors)


def _tensorboard_writer(out: Path, config: Any, purge_step: int | None):
    if not config.tensorboard or not runfiles.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: "
                         "pip install 'samhess[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge_step)


def _log_tensorboard(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if key not in ("step", "eigenvalues") and isinstance(value, (int, float)):
            writer.add_scalar(key, value, record["step"])
    for index, value in enumerate(record.get("eigenvalues") or []):
        writer.add_scalar(f"eigenvalue/{index + 1}", value, record["step"])
    writer.flush()


def run_experiment(config: Any, out: str | Path, *, resume: bool = False,
                   force: bool = False, quiet: bool = False,
                   progress_desc: str | None = None, write_report: bool = True,
                   comparison: ComparisonProgress | None = None) -> RunResult:
    """Train, track, checkpoint, analyse the final model and write the run's report.

    A new run (not one ``resume`` continues) that fails before its first record is written
    removes the files it wrote, and ``out`` itself if it created it, so that the corrected
    command can use the same ``out``. With ``resume`` and no run in ``out``, a fresh run starts
    and one line on stderr says so.

    Args:
        config: the resolved configuration (:func:`samhess.experiments.config.build_run_config`).
        out: the run directory.
        resume: continue the run in ``out`` from its last checkpoint (a run that is complete is
            only re-summarized).
        force: delete the run files in ``out`` first.
        quiet: no progress bar.
        progress_desc: the progress bar's label.
        write_report: write the run's own report (a comparison writes one for all its runs).
        comparison: the progress of the comparison this run is a member of (its bar is drawn
            below the comparison's).

    Returns:
        A :class:`RunResult`.

    Raises:
        SamhessError: bad settings, missing data, a directory another process writes or that
            holds another run or files that are not samhess's, a corrupt checkpoint, or a
            diverged run (:class:`~samhess.errors.DivergenceError`); the message is one line.
    """
    out = Path(out)
    with run_directory_lock(out, "samhess run"):
        decision = on_main_process(inspect_run_dir, out, config, resume=resume, force=force)
        task = build_task(config)  # bad data or model settings fail before the claim
        if resume and decision == "fresh" and is_main_process():
            print(f"samhess: no run found in {out}; starting a fresh one", file=sys.stderr)
        on_main_process(claim_run_dir, out, config, decision)
        try:
            return _train(task, out, decision, quiet=quiet, progress_desc=progress_desc,
                          write_report=write_report, comparison=comparison)
        except BaseException:
            # A new run that fails before its first record leaves nothing to resume: take back
            # what it wrote, so that the corrected command finds the directory as it was.
            if decision != "continue" and not holds_a_record(out):
                abandon_run_dir(out)
            raise


def remaining_record_steps(config: Any, step: int, records: int
                           ) -> tuple[list[int], list[int]]:
    """The steps still to be recorded by a run at ``step`` that has written ``records`` records
    (of :func:`~samhess.experiments.config.record_steps`), split into plain records and those
    that also measure per-layer curvature."""
    steps = [s for s in record_steps(config) if s > step or (s == 0 and records == 0)]
    layered = [s for s in steps if layer_record_due(config, s)]
    return [s for s in steps if s not in layered], layered


def layer_record_due(config: Any, step: int) -> bool:
    """Whether the record at ``step`` also measures per-layer curvature."""
    every = config.layer_track_every
    return bool(every) and (step % every == 0 or step == config.steps)


def _train(task: Task, out: Path, decision: str, *, quiet: bool, progress_desc: str | None,
           write_report: bool, comparison: ComparisonProgress | None) -> RunResult:
    """The body of :func:`run_experiment` once ``out`` is claimed."""
    from samhess.experiments.analyze import ANALYSIS_DIR, ANALYSIS_JSON, analyze_final_model
    from samhess.experiments.report import build_report

    config = task.config
    continuing = decision == "continue"
    log = MetricsLog(out / METRICS_FILE)
    owned = OwnedFiles(out)
    state = RunState()
    resumed_from = None
    checkpoint_path = out / CHECKPOINT_FILE
    stored = on_main_process(read_checkpoint, checkpoint_path) if continuing else None
    if stored is not None:
        state = restore_checkpoint(task, stored, checkpoint_path)
        on_main_process(log.truncate, state.records, record_steps(config)[:state.records])
        resumed_from = state.step
    else:
        log.reset()
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
    device = next(task.model.parameters()).device
    on_main_process(note_environment, out, environment(device, get_world_size()), state.step)
    writer = _tensorboard_writer(out, config, resumed_from)
    order = BatchOrder.of_task(task)
    context = StepContext(kind=task.kind, optimizer=task.optimizer, model=task.model,
                          loss_fn=task.loss_fn, train_model=_data_parallel(task.model),
                          label_generator=task.label_generator,
                          per_replica=config.sam_perturbation == "per-replica")

    analysis_path = out / ANALYSIS_DIR / ANALYSIS_JSON
    analysis_due = resumed_from != config.steps or not on_main_process(analysis_path.exists)
    plain, layered = remaining_record_steps(config, state.step, state.records)
    show = progress_enabled(quiet) and is_main_process()
    bar_settings = dict(desc=progress_desc or f"{config.optimizer} seed {config.seed}",
                        steps=config.steps, step=state.step, records=len(plain),
                        layer_records=len(layered), analysis=analysis_due)
    if comparison is not None:
        bar = comparison.run(config.optimizer, **bar_settings)
    else:
        bar = RunProgress(**bar_settings, enabled=show)

    def record() -> None:
        started = time.perf_counter()
        layers = layer_record_due(config, state.step)
        kind = "layer record" if layers else "record"
        with bar.phase(f"{kind} at step {state.step}", kind):
            if state.step < config.steps:
                # The step about to be measured is the next training step, so give IRE the
                # mask that step would compute (same weights, batch and label generator):
                # training is unchanged, and IRE's first record has a mask to measure.
                refresh_ire_mask(context, order.batch(state.step))
            batch_loss = state.loss_sum / state.loss_count if state.loss_count else None
            try:
                entry = measure_record(task.model, task.optimizer, task.tracking,
                                       step=state.step,
                                       epoch=state.step / task.batches_per_epoch,
                                       batch_loss=batch_loss, layers=layers)
            except ValueError:
                # The curvature refuses a non-finite loss; if that is why, the run diverged.
                reason = _nonfinite(task)
                if reason is not None:
                    raise divergence(state.step, reason) from None
                raise
        unmeasured = [key for key in _MUST_BE_FINITE if not _finite(entry.get(key))]
        if unmeasured:
            raise divergence(state.step, f"{', '.join(unmeasured)} not finite at the record")
        log.append(entry)
        _log_tensorboard(writer, entry)
        state.records += 1
        state.loss_sum, state.loss_count = 0.0, 0
        state.tracking_seconds += time.perf_counter() - started

    def close_writer() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            owned.record_external(_event_files(out))
            writer = None

    def divergence(step: int, what: str) -> DivergenceError:
        return _divergence(config, step, what)

    def checkpoint() -> None:
        owned.write_files({CHECKPOINT_FILE: runfiles.checkpoint_bytes(make_checkpoint(task, state)),
                           TIMING_FILE: _timing_bytes(state)})

    try:
        if state.step == 0 and state.records == 0:
            record()
            checkpoint()
        task.model.train()
        while state.step < config.steps:
            started = time.perf_counter()
            try:
                loss = training_step(context, order.batch(state.step))
            except DivergenceError as error:  # the optimizer's raise_on_nonfinite
                raise divergence(state.step, _reason(error)) from None
            seconds = time.perf_counter() - started
            state.train_seconds += seconds
            if not np.isfinite(loss):
                raise divergence(state.step, f"loss {loss}")
            state.step += 1
            state.loss_sum += loss
            state.loss_count += 1
            bar.trained(seconds, loss)
            if state.step % config.track_every == 0 or state.step == config.steps:
                record()
            if state.step % config.checkpoint_every == 0 or state.step == config.steps:
                checkpoint()
        close_writer()
        if analysis_due:
            with bar.phase("final analysis", "analysis"):
                analyze_final_model(out, task, step=state.step, phase=bar.subphase)
    finally:
        bar.close()
        close_writer()
    if write_report:
        report = on_main_process(build_report, out)
        return RunResult(out=out, summary=report.summary, report_path=report.html_path,
                         resumed_from=resumed_from, analysis_errors=report.analysis_errors)
    return RunResult(out=out, summary={}, report_path=out / "report.html",
                     resumed_from=resumed_from)


def _data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when this process is one of several.

    Only the training passes go through the wrapper; records, curvature and checkpoints use
    ``model`` itself, whose parameters the wrapper shares.
    """
    if get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _timing_bytes(state: RunState) -> bytes:
    return (runfiles.dumps_json({
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "seconds_per_step": state.train_seconds / state.step if state.step else None,
        "tracking_seconds": state.tracking_seconds,
    }) + "\n").encode("utf-8")


def _event_files(out: Path) -> list[str]:
    folder = out / "tensorboard"
    return sorted(str(path.relative_to(out)) for path in folder.glob("events.out.tfevents.*"))


#: Record keys that a run which has not diverged measures as finite numbers.
_MUST_BE_FINITE = ("train_loss", "test_loss", "grad_norm", "lambda_max", "hessian_trace")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


@torch.no_grad()
def _nonfinite(task: Task) -> str | None:
    """What is not finite about the model now (weights, or its loss on the tracking batch)."""
    if not all(bool(torch.isfinite(p).all()) for p in task.model.parameters()):
        return "the weights are not finite"
    inputs, targets = task.tracking.batch
    was_training = task.model.training
    task.model.eval()
    try:
        loss = float(task.loss_fn(task.model(inputs), targets))
    finally:
        task.model.train(was_training)
    return None if np.isfinite(loss) else f"the loss on the tracking batch is {loss}"


def _reason(error: DivergenceError) -> str:
    """The optimizer's message without its advice for library callers."""
    return str(error).split(" (raise_on_nonfinite")[0]


def _divergence(config: Any, step: int, what: str) -> DivergenceError:
    """The one line for a run that diverged at ``step``: what, where, and what to change."""
    remedy = "lower --lr" + (" or --rho" if "rho" in optimizer_kind(config.optimizer).reads
                             else "")
    return DivergenceError(f"training diverged at step {step} of the {config.optimizer} run "
                           f"({what}); {remedy}")


__all__ = ["RunResult", "run_experiment"]
