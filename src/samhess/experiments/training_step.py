"""One training step of a run, for every optimizer kind, and IRE's mask refresh before it.

How a step drives the optimizer is the kind's :class:`~samhess.experiments.optimizer_kinds.
StepProtocol`:

* one pass: forward, backward, ``step()``;
* two passes: the gradient at w, ``first_step`` to w + e, the gradient at w + e with BatchNorm
  statistics frozen, ``second_step`` (:func:`samhess.distributed.sam_step`, whose ascent can be
  the global or each rank's own under torchrun);
* closure: ``step(closure)``, the optimizer calling the closure as often as it needs; from the
  second call of a step on, BatchNorm statistics are frozen, so they are updated once per step;
* micro-batches: ``step(closure)`` with ``closure(i)`` running micro-batch ``i`` of the batch
  (and ``closure()`` the whole batch); BatchNorm statistics move on the first call of each
  micro-batch only.

IRE needs a diagonal curvature estimate every ``refresh_every`` steps; :func:`refresh_ire_mask`
computes it with :func:`samhess.curvature.fisher_diagonal` on ``IRE.refresh_batch`` of the
step's own batch (the sampled-label Fisher, drawing labels from a generator the run checkpoints) and hands it to
``IRE.update_mask``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samhess.analysis._steps import micro_batch_count, optimizer_parameters
from samhess.curvature.batches import micro_batch
from samhess.experiments.optimizer_kinds import OptimizerKind, StepProtocol

__all__ = ["StepContext", "training_step", "refresh_ire_mask"]


@dataclass
class StepContext:
    """Everything a training step needs besides the batch.

    Attributes:
        kind: the optimizer's registry entry (its step protocol).
        optimizer: the optimizer the kind built.
        model: the unwrapped model (curvature estimates run through it).
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss.
        train_model: what the training passes run through: ``model``'s
            DistributedDataParallel wrapper under torch.distributed, else ``model``.
        label_generator: the source of the sampled labels of IRE's Fisher estimate.
        per_replica: SAM's ascent from each rank's own shard (first pass inside ``no_sync``)
            instead of the global gradient (two-pass kinds only).
    """

    kind: OptimizerKind
    optimizer: Any
    model: nn.Module
    loss_fn: Callable
    train_model: nn.Module | None = None
    label_generator: torch.Generator | None = None
    per_replica: bool = False

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model
        if self.per_replica and not self.kind.per_replica_ascent:
            raise ValueError(
                f"--sam-perturbation 'per-replica' is invalid for optimizer {self.kind.name!r}: "
                "its step uses the first pass's gradient beyond the ascent, so replicas "
                "perturbed apart would drift apart (sam, usam, asam and IRE over them take it)")


def refresh_ire_mask(context: StepContext, batch: tuple) -> bool:
    """Give an IRE optimizer a new Fisher-diagonal estimate when it asks for one.

    Under ``torch.distributed`` each rank estimates on its shard of ``batch`` and the estimates
    are averaged over the ranks, weighted by shard sizes
    (:class:`samhess.distributed.ShardedData`), so every rank selects the same mask. Each rank
    then draws its sampled labels from its own generator, seeded from one draw of the shared
    generator: that draw keeps the shared generator in the same state on every rank, which is
    what lets rank 0's checkpoint restore all of them.

    Args:
        context: the step's context (``model`` is the unwrapped model).
        batch: the global batch.

    Returns:
        Whether the mask was refreshed.
    """
    from samhess.optim import IRE

    optimizer, generator = context.optimizer, context.label_generator
    if not isinstance(optimizer, IRE) or not optimizer.needs_refresh():
        return False
    from samhess.curvature import fisher_diagonal
    from samhess.distributed import ShardedData, get_rank, get_world_size, shard_batch

    # The estimate sees IRE's share of the batch (IRE.refresh_batch: its leading quarter by default).
    batch = optimizer.refresh_batch(batch)
    data: Any = batch
    if get_world_size() > 1:
        shard = shard_batch(*batch)
        data = ShardedData((shard.inputs, shard.targets))
        if generator is not None:
            generator = _rank_generator(generator, get_rank())
    diag = fisher_diagonal(context.model, context.loss_fn, data,
                           params=optimizer_parameters(optimizer), generator=generator)
    optimizer.update_mask(diag)
    return True


def _rank_generator(shared: torch.Generator, rank: int) -> torch.Generator:
    """A generator for this rank, seeded by one draw from ``shared`` and the rank."""
    import numpy as np

    draw = int(torch.randint(0, 2**62, (1,), generator=shared, device=shared.device))
    seed = int(np.random.SeedSequence([draw, rank]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=shared.device).manual_seed(seed % 2**63)


def _frozen_after_first(model: nn.Module, calls: dict[Any, int], key: Any
                        ) -> contextlib.AbstractContextManager:
    """No-op on the first call for ``key``; BatchNorm statistics frozen on later ones."""
    from samhess.optim import disable_running_stats

    calls[key] = calls.get(key, 0) + 1
    return contextlib.nullcontext() if calls[key] == 1 else disable_running_stats(model)


def training_step(context: StepContext, batch: tuple) -> float:
    """One optimizer step on ``batch``, driven as the context's kind declares.

    IRE kinds refresh their mask first when due. Under ``torch.distributed``, ``batch`` is the
    global batch: each rank takes its contiguous shard, its loss is scaled so that
    DistributedDataParallel's gradient average is the global batch's gradient, and the
    returned loss is the global batch's.

    Returns:
        The loss at w (before the step), as a float.
    """
    from samhess.distributed import get_world_size, sam_step, shard_batch, weighted_mean_over_ranks

    refresh_ire_mask(context, batch)
    shard = shard_batch(*batch)
    optimizer, model, loss_fn = context.optimizer, context.train_model, context.loss_fn
    protocol = context.kind.protocol

    def backward(inputs: Any, targets: Any) -> torch.Tensor:
        loss = loss_fn(model(inputs), targets)
        (loss if shard.loss_scale == 1.0 else loss * shard.loss_scale).backward()
        return loss

    if protocol is StepProtocol.TWO_PASS:
        loss = sam_step(model, optimizer, loss_fn, shard.inputs, shard.targets,
                        per_replica=context.per_replica, loss_scale=shard.loss_scale)
    elif protocol is StepProtocol.ONE_PASS:
        optimizer.zero_grad(set_to_none=True)
        loss = backward(shard.inputs, shard.targets)
        optimizer.step()
    else:
        calls: dict[Any, int] = {}

        def closure(index: int | None = None) -> torch.Tensor:
            inputs, targets = shard.inputs, shard.targets
            if index is not None:
                inputs, targets = micro_batch((inputs, targets), index,
                                              micro_batch_count(optimizer))
            optimizer.zero_grad(set_to_none=True)
            key = index if protocol is StepProtocol.MICRO_BATCH else None
            with torch.enable_grad(), _frozen_after_first(context.model, calls, key):
                return backward(inputs, targets)

        first = optimizer.step(closure)
        loss = first if isinstance(first, torch.Tensor) else torch.tensor(float("nan"))
    optimizer.zero_grad(set_to_none=True)
    loss = loss.detach()
    if get_world_size() > 1:
        loss = weighted_mean_over_ranks(loss, shard.size)
    return float(loss)
