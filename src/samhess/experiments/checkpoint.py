"""A run's checkpoint: where the run stands, saved atomically, and how it is put back.

A checkpoint holds the model, the optimizer (base optimizer and IRE mask included), the torch,
numpy and Python RNG states, the generator of IRE's sampled labels, the step, the data position
and the number of records written (:class:`RunState`). Loading one into a freshly built
:class:`~samhess.experiments.task.Task` of the same configuration continues the run exactly.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samhess.distributed import get_world_size
from samhess.experiments import runfiles
from samhess.errors import RunFileError
from samhess.experiments.rundir import read_run_config
from samhess.experiments.runfiles import CHECKPOINT_FILE
from samhess.experiments.task import Task, build_task

__all__ = ["RunState", "make_checkpoint", "restore_checkpoint", "read_checkpoint",
           "load_trained_task"]


@dataclass
class RunState:
    """Where a run stands: what a checkpoint holds besides model and optimizer."""

    step: int = 0
    records: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    train_seconds: float = 0.0
    tracking_seconds: float = 0.0


def rng_state(task: Task) -> dict[str, Any]:
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


def set_rng_state(task: Task, state: dict[str, Any]) -> None:
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


def make_checkpoint(task: Task, state: RunState) -> dict[str, Any]:
    epoch, position = divmod(state.step, task.batches_per_epoch)
    return {
        "config": task.config.identity(),
        "step": state.step,
        "records": state.records,
        "data": {"seed": task.config.seed, "epoch": epoch, "position": position,
                 "batches_per_epoch": task.batches_per_epoch},
        "model": task.model.state_dict(),
        "optimizer": task.optimizer.state_dict(),
        "rng": rng_state(task),
        "state": dataclasses.asdict(state),
        "world_size": get_world_size(),
    }


def restore_checkpoint(task: Task, checkpoint: dict[str, Any], path: Path, *,
             continue_training: bool = True) -> RunState:
    try:
        if checkpoint["config"] != task.config.identity():
            raise RunFileError(f"checkpoint {path} belongs to a different configuration")
        written_by = checkpoint.get("world_size", 1)
        # the shards, and so the steps, depend on the number of processes; a model does not
        if continue_training and written_by != get_world_size():
            raise RunFileError(
                f"checkpoint {path} was written by {written_by} process(es) and this run has "
                f"{get_world_size()}; resume with the same number (torchrun --nproc-per-node)")
        task.model.load_state_dict(checkpoint["model"])
        task.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(task, checkpoint["rng"])
        return RunState(**checkpoint["state"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, RunFileError):
            raise
        raise runfiles.corrupt_checkpoint(path, exc) from None


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` when the run stopped before writing one."""
    return runfiles.load_checkpoint(path) if path.exists() else None


def load_trained_task(run_dir: Path) -> tuple[Task, int]:
    """Rebuild a saved run's task with the model and optimizer of its last checkpoint.

    Returns:
        The task and the checkpoint's step.
    """
    config = read_run_config(run_dir)
    task = build_task(config)
    path = run_dir / CHECKPOINT_FILE
    state = restore_checkpoint(task, runfiles.load_checkpoint(path), path, continue_training=False)
    return task, state.step
