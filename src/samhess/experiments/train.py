"""The tracked training loop: :func:`run_experiment`.

One run trains one model with one optimizer and records, every ``track_every`` steps (and at
steps 0 and ``steps``), the measurements of :mod:`samhess.experiments.tracking`. It is
reproducible and resumable:

* Batch order is a function of (seed, epoch) alone: epoch ``e`` visits the training set in the
  permutation drawn from ``numpy.random.SeedSequence(seed, spawn_key=(0, e))``, in
  ``floor(n / batch_size)`` full batches. The data position is therefore the step itself.
* A checkpoint, written atomically at every record (or every ``checkpoint_every`` steps), holds
  the model, the optimizer (base optimizer and IRE mask included), the torch, numpy and Python
  RNG states, the generator of IRE's sampled labels, the step, the data position and the number
  of records written. ``--resume`` loads it and cuts ``metrics.jsonl`` back to that many records,
  so a run interrupted at any point, even by ``kill -9``, ends with the metrics file of a run
  that never stopped.
* Wall-clock time is kept out of ``metrics.jsonl`` (in ``timing.json``), so two runs with one
  seed write identical metrics on CPU.

Under ``torchrun`` (``torch.distributed`` initialized by the command line) the training passes
run through DistributedDataParallel and every rank takes its contiguous shard of each global
batch (:func:`samhess.experiments.optimizers.training_step`): with SAM's default global
perturbation, N processes take the steps one process takes on the same batches. Every rank
measures the records (the same numbers); rank 0 alone writes files, and decides, once for all,
what to do with the output directory and what the checkpoint holds
(:func:`samhess.distributed.on_main_process`). A checkpoint records the number of processes, and
training resumes only with the same number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from samhess.distributed import get_world_size, is_main_process, on_main_process
from samhess.experiments import runfiles
from samhess.experiments.config import PRESENTATION_KEYS, RunConfig
from samhess.experiments.optimizers import build_optimizer, refresh_ire_mask, training_step
from samhess.experiments.progress import progress_bar, progress_enabled
from samhess.experiments.runfiles import (
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, TIMING_FILE, MetricsLog,
)
from samhess.experiments.tracking import TrackingSetup, measure_record

#: Seed-sequence branches: batch order, tracking batch, IRE's sampled labels, curvature probes.
_ORDER, _TRACKING, _LABELS, _PROBES = 0, 1, 2, 3


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` intra-op threads inside the block (``None``: leave torch's setting).

    The default models are small enough that thread start-up and synchronization cost more
    than they save, and on a busy machine extra threads wait on each other; one thread also
    makes the numbers independent of the machine's core count.
    """
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_run_dir(config: RunConfig) -> Path:
    """``runs/<dataset>-<optimizer>-seed-<seed>``."""
    return Path("runs") / f"{config.dataset}-{config.optimizer}-seed-{config.seed}"


def _derived_seed(seed: int, branch: int) -> int:
    """An independent 63-bit seed for one use of the run's seed."""
    state = np.random.SeedSequence(seed, spawn_key=(branch,)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training examples."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ORDER, epoch)))
    return rng.permutation(n)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (must be available) or ``auto`` (CUDA where available).

    Under torch.distributed, ``cuda`` is this process's GPU (``LOCAL_RANK``, selected when the
    process group was joined).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device 'cuda' is invalid: no CUDA device is available here")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@dataclass
class Task:
    """Data, model, loss and optimizer of one run, on its device and in its precision."""

    config: RunConfig
    data: Any
    model: nn.Module
    loss_fn: nn.Module
    optimizer: Any
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    tracking: TrackingSetup
    label_generator: torch.Generator
    batches_per_epoch: int


def _to(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.to(device)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def build_task(config: RunConfig) -> Task:
    """Load the data, build the model (seeded), the loss, the optimizer and the tracking setup."""
    from samhess.experiments.data import load_dataset
    from samhess.experiments.models import build_model, loss_for

    from samhess.experiments.datasets.files import DataDirectoryError

    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    try:
        data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    except DataDirectoryError as error:
        raise error.naming("--data-dir") from None
    if config.batch_size > data.num_train:
        raise ValueError(f"--batch-size {config.batch_size} is invalid: the training set of "
                         f"{config.dataset!r} holds only {data.num_train} examples")
    model = build_model(config.model, data, seed=config.seed).to(device=device, dtype=dtype)
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.top_k >= dim:
        # Lanczos finds at most dim - 1 eigenpairs; caught here, before the run directory is
        # claimed, rather than at the first record.
        raise ValueError(f"--top-k {config.top_k} is invalid: it must be smaller than the "
                         f"number of trainable parameters of the {config.model!r} model, {dim}")
    loss_fn = loss_for(data)
    optimizer = build_optimizer(config.optimizer, model, config.to_dict())

    train_x, train_y = _to(data.train_inputs, device, dtype), _to(data.train_targets, device, dtype)
    test_x, test_y = _to(data.test_inputs, device, dtype), _to(data.test_targets, device, dtype)
    size = min(config.tracking_batch_size, data.num_train)
    chosen = np.random.default_rng(_derived_seed(config.seed, _TRACKING)).choice(
        data.num_train, size=size, replace=False)
    chosen = torch.as_tensor(np.sort(chosen), device=device)
    limit = config.eval_examples
    tracking = TrackingSetup(
        loss_fn=loss_fn, kind=data.kind, batch=(train_x[chosen], train_y[chosen]),
        train_eval=(train_x[:limit], train_y[:limit]), test_eval=(test_x[:limit], test_y[:limit]),
        top_k=config.top_k, trace_matvecs=config.trace_matvecs,
        seed=_derived_seed(config.seed, _PROBES) % (2**31),
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(_derived_seed(config.seed, _LABELS))
    return Task(config=config, data=data, model=model, loss_fn=loss_fn, optimizer=optimizer,
                train_inputs=train_x, train_targets=train_y, tracking=tracking,
                label_generator=generator,
                batches_per_epoch=data.num_train // config.batch_size)


class _BatchOrder:
    """Mini-batches as a function of the step: epoch = step // batches_per_epoch."""

    def __init__(self, task: Task):
        self.task = task
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.task
        epoch, position = divmod(step, task.batches_per_epoch)
        if epoch != self._epoch:
            order = epoch_permutation(task.config.seed, epoch, task.train_inputs.shape[0])
            self._order = torch.as_tensor(order, device=task.train_inputs.device)
            self._epoch = epoch
        size = task.config.batch_size
        index = self._order[position * size:(position + 1) * size]
        return task.train_inputs[index], task.train_targets[index]


@dataclass
class RunState:
    """Where a run stands: what a checkpoint holds besides model and optimizer."""

    step: int = 0
    records: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    train_seconds: float = 0.0
    tracking_seconds: float = 0.0


def _rng_state(task: Task) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": [list(item) if isinstance(item, tuple) else item for item in random.getstate()],
        "labels": task.label_generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def _set_rng_state(task: Task, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    task.label_generator.set_state(state["labels"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint(task: Task, state: RunState) -> dict[str, Any]:
    epoch, position = divmod(state.step, task.batches_per_epoch)
    return {
        "config": task.config.identity(),
        "step": state.step,
        "records": state.records,
        "data": {"seed": task.config.seed, "epoch": epoch, "position": position,
                 "batches_per_epoch": task.batches_per_epoch},
        "model": task.model.state_dict(),
        "optimizer": task.optimizer.state_dict(),
        "rng": _rng_state(task),
        "state": dataclasses.asdict(state),
        "world_size": get_world_size(),
    }


def _restore(task: Task, checkpoint: dict[str, Any], path: Path, *,
             continue_training: bool = True) -> RunState:
    try:
        if checkpoint["config"] != task.config.identity():
            raise ValueError(f"checkpoint {path} belongs to a different configuration")
        written_by = checkpoint.get("world_size", 1)
        # the shards, and so the steps, depend on the number of processes; a model does not
        if continue_training and written_by != get_world_size():
            raise ValueError(
                f"checkpoint {path} was written by {written_by} process(es) and this run has "
                f"{get_world_size()}; resume with the same number (torchrun --nproc-per-node)")
        task.model.load_state_dict(checkpoint["model"])
        task.optimizer.load_state_dict(checkpoint["optimizer"])
        _set_rng_state(task, checkpoint["rng"])
        return RunState(**checkpoint["state"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise runfiles.corrupt_checkpoint(path, exc) from None


def inspect_run_dir(out: Path, config: RunConfig, *, resume: bool, force: bool) -> str:
    """What to do with ``out``, decided without touching it.

    Returns:
        ``"fresh"`` (nothing there), ``"continue"`` (``resume`` of this very run) or
        ``"replace"`` (``force`` over existing run files).

    Raises:
        ValueError: ``out`` holds a run and neither ``resume`` nor ``force`` says what to do,
            or ``resume`` meets a different configuration.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if not runfiles.holds_run(out):
        return "fresh"
    if force:
        return "replace"
    if not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or "
                         "--force to replace it")
    stored_path = out / CONFIG_FILE
    if (out / runfiles.COMPARE_FILE).exists() or not stored_path.exists():
        raise ValueError(f"{out} holds a comparison or an incomplete run, not a run to "
                         "resume; use --force to replace it")
    _require_same_run(out, runfiles.read_json(stored_path), config.identity())
    return "continue"


def claim_run_dir(out: Path, config: RunConfig, decision: str) -> None:
    """Make ``out`` this run's directory (after :func:`inspect_run_dir` said how)."""
    if decision == "replace":
        runfiles.remove_outputs(out)
    if runfiles.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    runfiles.write_json_atomic(out / CONFIG_FILE, config.to_dict())


def _require_same_run(out: Path, stored: Any, identity: dict[str, Any]) -> None:
    if not isinstance(stored, dict):
        raise ValueError(f"{out / CONFIG_FILE} is not a run configuration")
    stored_identity = {k: v for k, v in stored.items() if k not in PRESENTATION_KEYS}
    for key in sorted(set(stored_identity) | set(identity)):
        if stored_identity.get(key) != identity.get(key):
            raise ValueError(
                f"cannot resume {out}: it holds a different run ({key} = "
                f"{stored_identity.get(key)!r} there, {identity.get(key)!r} now); use --force "
                "to replace it or another --out"
            )


@dataclass
class RunResult:
    """What :func:`run_experiment` returns: the directory, its summary and the report's path."""

    out: Path
    summary: dict[str, Any]
    report_path: Path
    resumed_from: int | None

    def screen_summary(self) -> str:
        """A few lines for the terminal."""
        from samhess.experiments.report import format_run_summary

        return format_run_summary(self.out, self.summary, self.report_path, self.resumed_from)


def _tensorboard_writer(out: Path, config: RunConfig, purge_step: int | None):
    if not config.tensorboard or not runfiles.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: "
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


def run_experiment(config: RunConfig, out: str | Path, *, resume: bool = False,
                   force: bool = False, quiet: bool = False,
                   progress_desc: str | None = None, write_report: bool = True) -> RunResult:
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

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: bad settings, missing data, a directory holding another run, a corrupt
            checkpoint, or a diverged run; the message is one line.
    """
    out = Path(out)
    decision = on_main_process(inspect_run_dir, out, config, resume=resume, force=force)
    task = build_task(config)  # bad data or model settings fail before the directory is claimed
    if resume and decision == "fresh" and is_main_process():
        print(f"samhess: no run found in {out}; starting a fresh one", file=sys.stderr)
    created = decision == "fresh" and not on_main_process(out.exists)
    on_main_process(claim_run_dir, out, config, decision)
    try:
        return _train(task, out, decision, quiet=quiet, progress_desc=progress_desc,
                      write_report=write_report)
    except BaseException:
        # A new run that fails before its first record leaves nothing to resume: take back
        # what it created, so that the corrected command finds the directory as it was.
        if decision != "continue" and not _holds_a_record(out):
            abandon_run_dir(out, created)
        raise


def _holds_a_record(out: Path) -> bool:
    try:
        return b"\n" in (out / METRICS_FILE).read_bytes()
    except OSError:
        return False


def abandon_run_dir(out: Path, created: bool) -> None:
    """Remove a new run's files (and ``out`` itself if the run created it and it is empty)."""
    if not is_main_process():
        return
    runfiles.remove_outputs(out)
    if created:
        with contextlib.suppress(OSError):  # not empty: files of the user's stay, and out too
            out.rmdir()


def _train(task: Task, out: Path, decision: str, *, quiet: bool, progress_desc: str | None,
           write_report: bool) -> RunResult:
    """The body of :func:`run_experiment` once ``out`` is claimed."""
    from samhess.experiments.analyze import analyze_final_model
    from samhess.experiments.report import build_report

    config = task.config
    continuing = decision == "continue"
    log = MetricsLog(out / METRICS_FILE)
    state = RunState()
    resumed_from = None
    checkpoint_path = out / CHECKPOINT_FILE
    stored = on_main_process(_read_checkpoint, checkpoint_path) if continuing else None
    if stored is not None:
        state = _restore(task, stored, checkpoint_path)
        log.truncate(state.records)
        resumed_from = state.step
    else:
        log.reset()
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
    writer = _tensorboard_writer(out, config, resumed_from)
    order = _BatchOrder(task)
    train_model = _data_parallel(task.model)

    def record() -> None:
        started = time.perf_counter()
        if state.step < config.steps:
            # The step about to be measured is the next training step, so give IRE the mask
            # that step would compute (same weights, batch and label generator): training is
            # unchanged, and IRE's first record has a mask to measure.
            refresh_ire_mask(task.optimizer, task.model, task.loss_fn, order.batch(state.step),
                             task.label_generator)
        batch_loss = state.loss_sum / state.loss_count if state.loss_count else None
        entry = measure_record(task.model, task.optimizer, task.tracking, step=state.step,
                               epoch=state.step / task.batches_per_epoch, batch_loss=batch_loss)
        log.append(entry)
        _log_tensorboard(writer, entry)
        state.records += 1
        state.loss_sum, state.loss_count = 0.0, 0
        state.tracking_seconds += time.perf_counter() - started

    def checkpoint() -> None:
        runfiles.save_checkpoint(checkpoint_path, _checkpoint(task, state))
        _write_timing(out, state)

    if state.step == 0 and state.records == 0:
        record()
        checkpoint()
    bar = progress_bar(total=config.steps, initial=state.step,
                       desc=progress_desc or f"{config.optimizer} seed {config.seed}",
                       enabled=progress_enabled(quiet) and is_main_process(), unit="step")
    try:
        task.model.train()
        while state.step < config.steps:
            started = time.perf_counter()
            loss = training_step(task.optimizer, task.model, task.loss_fn,
                                 order.batch(state.step), generator=task.label_generator,
                                 train_model=train_model,
                                 per_replica=config.sam_perturbation == "per-replica")
            state.train_seconds += time.perf_counter() - started
            if not np.isfinite(loss):
                raise ValueError(f"training diverged at step {state.step} of the "
                                 f"{config.optimizer} run (loss {loss}); lower --lr or --rho")
            state.step += 1
            state.loss_sum += loss
            state.loss_count += 1
            if state.step % config.track_every == 0 or state.step == config.steps:
                record()
            if state.step % config.checkpoint_every == 0 or state.step == config.steps:
                checkpoint()
            bar.update(1)
            if state.loss_count == 1 or state.step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    analysis_path = out / "analysis" / "analysis.json"
    if resumed_from != config.steps or not analysis_path.exists():
        analyze_final_model(out, task, step=state.step)
    if write_report:
        report = on_main_process(build_report, out)
        return RunResult(out=out, summary=report.summary, report_path=report.html_path,
                         resumed_from=resumed_from)
    return RunResult(out=out, summary={}, report_path=out / "report.html",
                     resumed_from=resumed_from)


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when the run stopped before writing one."""
    return runfiles.load_checkpoint(path) if path.exists() else None


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


def _write_timing(out: Path, state: RunState) -> None:
    runfiles.write_json_atomic(out / TIMING_FILE, {
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "seconds_per_step": state.train_seconds / state.step if state.step else None,
        "tracking_seconds": state.tracking_seconds,
    })


def load_trained_task(run_dir: Path) -> tuple[Task, int]:
    """Rebuild a saved run's task with the model and optimizer of its last checkpoint.

    Returns:
        The task and the checkpoint's step.
    """
    stored = runfiles.read_json(run_dir / CONFIG_FILE)
    if not isinstance(stored, dict):
        raise ValueError(f"{run_dir / CONFIG_FILE} is not a run configuration")
    config = RunConfig.from_dict(stored)
    task = build_task(config)
    path = run_dir / CHECKPOINT_FILE
    state = _restore(task, runfiles.load_checkpoint(path), path, continue_training=False)
    return task, state.step


__all__ = ["RunResult", "build_task", "default_run_dir", "epoch_permutation", "run_experiment",
           "load_trained_task", "torch_threads"]
