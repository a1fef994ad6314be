"""The task of one run: data, model, loss, optimizer and tracking setup, and its batch order.

A :class:`Task` is what a run's configuration builds before the first step, on its device and in
its precision; the training loop (:mod:`samhess.experiments.train`), the checkpoint
(:mod:`samhess.experiments.checkpoint`) and the final analysis (:mod:`samhess.experiments.
analyze`) all work on one. Everything random in a task comes from the run's seed through
independent branches of ``numpy.random.SeedSequence`` (:func:`derived_seed`):

* batch order: epoch ``e`` visits the training set in the permutation drawn from
  ``SeedSequence(seed, spawn_key=(0, e))``, in ``floor(n / batch_size)`` full batches, so the
  data position is the step itself;
* the fixed curvature batch, IRE's sampled labels and the curvature estimators' probes: one
  branch each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from samhess.errors import UsageError
from samhess.experiments.optimizer_kinds import OptimizerKind, build_optimizer, optimizer_kind
from samhess.experiments.tracking import TrackingSetup

__all__ = ["Task", "BatchOrder", "build_task", "derived_seed", "epoch_permutation",
           "resolve_device"]

#: Seed-sequence branches: batch order, tracking batch, IRE's sampled labels, curvature probes.
ORDER, TRACKING, LABELS, PROBES = 0, 1, 2, 3


def derived_seed(seed: int, branch: int) -> int:
    """An independent 63-bit seed for one use of the run's seed."""
    state = np.random.SeedSequence(seed, spawn_key=(branch,)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` training examples."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ORDER, epoch)))
    return rng.permutation(n)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (must be available) or ``auto`` (CUDA where available).

    Under torch.distributed, ``cuda`` is this process's GPU (``LOCAL_RANK``, selected when the
    process group was joined).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device 'cuda' is invalid: no CUDA device is available here")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@dataclass
class Task:
    """Data, model, loss and optimizer of one run, on its device and in its precision."""

    config: Any
    kind: OptimizerKind
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


def build_task(config: Any) -> Task:
    """Load the data, build the model (seeded), the loss, the optimizer and the tracking setup.

    The optimizer raises :class:`~samhess.errors.DivergenceError` on a non-finite gradient
    (``raise_on_nonfinite``) where it has that option (SAM and IRE kinds).

    Raises:
        UsageError: settings the data or the model cannot meet (batch size, top-k, a model
            that does not fit the data, an IRE gamma that selects no coordinate).
        DataError: missing or malformed data files.
    """
    from samhess.experiments.data import load_dataset
    from samhess.experiments.models import build_model, check_fits, loss_for

    from samhess.experiments.datasets.files import DataDirectoryError

    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    try:
        data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    except DataDirectoryError as error:
        raise error.naming("--data-dir") from None
    if config.batch_size > data.num_train:
        raise UsageError(f"--batch-size {config.batch_size} is invalid: the training set of "
                         f"{config.dataset!r} holds only {data.num_train} examples")
    try:
        check_fits(config.model, data)
    except ValueError as error:
        raise UsageError(str(error)) from None
    model = build_model(config.model, data, seed=config.seed).to(device=device, dtype=dtype)
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.top_k >= dim:
        # Lanczos finds at most dim - 1 eigenpairs; caught here, before the run directory is
        # claimed, rather than at the first record.
        raise UsageError(f"--top-k {config.top_k} is invalid: it must be smaller than the "
                         f"number of trainable parameters of the {config.model!r} model, {dim}")
    loss_fn = loss_for(data)
    kind = optimizer_kind(config.optimizer)
    try:
        optimizer = build_optimizer(config.optimizer, model,
                                    {**config.to_dict(), "num_data": data.num_train})
    except ValueError as error:  # a hyperparameter the model's size makes void (IRE's gamma)
        raise UsageError(f"--optimizer {config.optimizer!r}: {error}") from None
    _raise_on_nonfinite(optimizer)

    train_x, train_y = _to(data.train_inputs, device, dtype), _to(data.train_targets, device, dtype)
    test_x, test_y = _to(data.test_inputs, device, dtype), _to(data.test_targets, device, dtype)
    size = min(config.tracking_batch_size, data.num_train)
    chosen = np.random.default_rng(derived_seed(config.seed, TRACKING)).choice(
        data.num_train, size=size, replace=False)
    chosen = torch.as_tensor(np.sort(chosen), device=device)
    limit = config.eval_examples
    tracking = TrackingSetup(
        loss_fn=loss_fn, kind=data.kind, batch=(train_x[chosen], train_y[chosen]),
        train_eval=(train_x[:limit], train_y[:limit]), test_eval=(test_x[:limit], test_y[:limit]),
        top_k=config.top_k, trace_matvecs=config.trace_matvecs,
        seed=derived_seed(config.seed, PROBES) % (2**31),
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(config.seed, LABELS))
    return Task(config=config, kind=kind, data=data, model=model, loss_fn=loss_fn, optimizer=optimizer,
                train_inputs=train_x, train_targets=train_y, tracking=tracking,
                label_generator=generator,
                batches_per_epoch=data.num_train // config.batch_size)


def _raise_on_nonfinite(optimizer: Any) -> None:
    """Turn on ``raise_on_nonfinite`` of the optimizer and of the one it wraps (IRE over SAM)."""
    for part in (optimizer, getattr(optimizer, "optimizer", None)):
        if part is not None and hasattr(part, "raise_on_nonfinite"):
            part.raise_on_nonfinite = True


class BatchOrder:
    """Mini-batches as a function of the step alone: epoch = step // batches_per_epoch.

    Epoch ``e`` visits the ``n`` examples in the permutation :func:`epoch_permutation` draws
    for ``(seed, e)``, in ``floor(n / batch_size)`` full batches, so that a resumed run meets
    the batches a straight run meets without any saved state.

    Args:
        inputs: the training inputs, ``(n, ...)``.
        targets: the training targets, ``(n, ...)``.
        batch_size: examples per batch, at most ``n``.
        seed: the run's seed.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int):
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = inputs.shape[0] // batch_size
        self._epoch = -1
        self._order: torch.Tensor | None = None

    @classmethod
    def of_task(cls, task: Task) -> BatchOrder:
        """The batch order of a run's task."""
        return cls(task.train_inputs, task.train_targets, task.config.batch_size,
                   task.config.seed)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            order = epoch_permutation(self.seed, epoch, self.inputs.shape[0])
            self._order = torch.as_tensor(order, device=self.inputs.device)
            self._epoch = epoch
        size = self.batch_size
        index = self._order[position * size:(position + 1) * size]
        return self.inputs[index], self.targets[index]
