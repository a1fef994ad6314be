r"""Splitting a global batch (or a data set) across the ranks of a process group.

The split is contiguous and as even as possible, the rule of ``torch.tensor_split``: with ``n``
examples over ``W`` ranks, rank ``r`` holds ``n // W`` examples, plus one for the first
``n % W`` ranks. Rank order is example order, so the shards concatenated in rank order are the
global batch again.

With DistributedDataParallel every rank's backward pass all-reduces the gradient of its own
mean loss and divides by ``W``: that is the gradient of the global mean loss only when the
shards are equal. :attr:`Shard.loss_scale` corrects unequal shards,

.. math::

    \frac{1}{W}\sum_r \Bigl(\frac{W n_r}{n}\Bigr) \nabla L_r
    = \sum_r \frac{n_r}{n} \nabla L_r = \nabla L,

where :math:`L_r` is rank :math:`r`'s mean loss over its :math:`n_r` examples and :math:`L` the
mean over all :math:`n`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from samhess._validation import check_int_at_least
from samhess.distributed.process import get_rank, get_world_size

__all__ = ["Shard", "shard_bounds", "shard_range", "shard_batch"]


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``total`` examples.

    Raises:
        ValueError: ``world_size < 1``, ``rank`` outside ``[0, world_size)``, or
            ``total < world_size`` (some rank would hold no example, and a mean loss over no
            example is undefined).
    """
    total = check_int_at_least("total", total, 0)
    world_size = check_int_at_least("world_size", world_size, 1)
    rank = check_int_at_least("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    if total < world_size:
        raise ValueError(
            f"cannot split {total} examples across {world_size} ranks: every rank needs at "
            "least one"
        )
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_range(total: int, group: dist.ProcessGroup | None = None) -> range:
    """The indices of this rank's share of ``total`` examples, e.g. for
    ``torch.utils.data.Subset(dataset, shard_range(len(dataset)))``.

    Unlike ``DistributedSampler``, no example is repeated to even out the shards, so a sum over
    the shards is the sum over the data set.
    """
    return range(*shard_bounds(total, get_rank(group), get_world_size(group)))


@dataclass(frozen=True)
class Shard:
    """This rank's part of a global batch.

    Attributes:
        inputs: the rank's inputs (a view of the global batch's).
        targets: the rank's targets.
        size: examples on this rank, :math:`n_r`.
        total: examples in the global batch, :math:`n`.
        world_size: ranks the batch was split over, :math:`W`.
        loss_scale: :math:`W n_r / n`; multiply the rank's mean loss by it before a synchronized
            backward pass so that DistributedDataParallel's average is the global mean's
            gradient (exactly 1 for equal shards).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    size: int
    total: int
    world_size: int

    @property
    def loss_scale(self) -> float:
        return self.world_size * self.size / self.total


def shard_batch(
    inputs: torch.Tensor, targets: torch.Tensor, group: dist.ProcessGroup | None = None
) -> Shard:
    """This rank's contiguous share of the global batch ``(inputs, targets)``.

    Every rank must call it with the same global batch (same seed, same data order). Outside a
    process group the shard is the whole batch.

    Raises:
        TypeError: inputs or targets is not a tensor.
        ValueError: inputs and targets hold different numbers of examples, or fewer examples
            than ranks.
    """
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if inputs.ndim == 0 or targets.ndim == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            "inputs and targets must hold the same number of examples along dim 0, got shapes "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    world_size = get_world_size(group)
    total = inputs.shape[0]
    start, stop = shard_bounds(total, get_rank(group), world_size)
    return Shard(
        inputs=inputs[start:stop],
        targets=targets[start:stop],
        size=stop - start,
        total=total,
        world_size=world_size,
    )
