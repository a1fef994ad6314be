r"""Sums and weighted means over the ranks of a process group, and data sharded across them.

Each function is one ``torch.distributed.all_reduce`` per dtype over a flat buffer holding every
tensor it is given, so a reduction of many tensors costs one collective. All ranks receive the
same bits, which is what keeps IRE's masks and Lanczos iterations identical on every rank. Every
rank must call the same functions in the same order; outside a process group they reduce over
the one process there is.

Weighted means serve quantities each rank computes as a mean over its own :math:`n_r` examples:

.. math::

    \bar x = \frac{\sum_r n_r x_r}{\sum_r n_r},

which is the mean over all examples. IRE's diagonal-curvature estimate is averaged this way
before ``IRE.update_mask``, so every rank ranks the same numbers and selects the same mask.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

import torch
import torch.distributed as dist

from samhess._validation import check_nonnegative
from samhess.distributed.process import get_rank, is_distributed

Result = TypeVar("Result")

__all__ = [
    "sum_over_ranks",
    "weighted_mean_over_ranks",
    "ShardedData",
    "sum_over_shards",
    "on_main_process",
]


def _as_tensor_list(name: str, values: object) -> tuple[list[torch.Tensor], bool]:
    if isinstance(values, torch.Tensor):
        return [values], True
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, torch.Tensor) for v in values
    ):
        raise TypeError(f"{name} must be a tensor or a list of tensors, got {values!r}")
    return list(values), False


def _all_reduce_sum(
    tensors: list[torch.Tensor], group: dist.ProcessGroup | None
) -> list[torch.Tensor]:
    """New tensors holding the sums over ranks, one collective per (dtype, device)."""
    results: list[torch.Tensor | None] = [None] * len(tensors)
    by_kind: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_kind.setdefault((tensor.dtype, tensor.device), []).append(index)
    for indices in by_kind.values():
        members = [tensors[i].detach() for i in indices]
        buffer = torch.cat([m.reshape(-1) for m in members])
        if is_distributed():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
        for i, chunk in zip(indices, torch.split(buffer, [m.numel() for m in members])):
            results[i] = chunk.view_as(tensors[i])
    return results  # type: ignore[return-value]


@overload
def sum_over_ranks(
    values: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor: ...
@overload
def sum_over_ranks(
    values: Sequence[torch.Tensor], group: dist.ProcessGroup | None = None
) -> list[torch.Tensor]: ...


def sum_over_ranks(values, group=None):
    """The sum over every rank of ``group`` of a tensor, or of each tensor of a list.

    Args:
        values: a tensor or a list of tensors, the same shapes, dtypes and order on every rank.
        group: the process group (default: the whole job).

    Returns:
        New tensors (the inputs are left as they are), detached from autograd; a copy of
        ``values`` outside a process group.
    """
    tensors, single = _as_tensor_list("values", values)
    summed = _all_reduce_sum(tensors, group)
    return summed[0] if single else summed


@overload
def weighted_mean_over_ranks(
    values: torch.Tensor, weight: float, group: dist.ProcessGroup | None = None
) -> torch.Tensor: ...
@overload
def weighted_mean_over_ranks(
    values: Sequence[torch.Tensor], weight: float, group: dist.ProcessGroup | None = None
) -> list[torch.Tensor]: ...


def weighted_mean_over_ranks(values, weight, group=None):
    r""":math:`\sum_r w_r x_r / \sum_r w_r` over the ranks of ``group``.

    Typical use: ``x_r`` is a mean over rank :math:`r`'s examples and ``weight`` their number,
    so the result is the mean over all examples. Floating-point tensors only; the sum is taken in
    each tensor's dtype.

    Args:
        values: a tensor or a list of floating-point tensors, alike on every rank.
        weight: this rank's weight :math:`w_r \ge 0` (for instance ``Shard.size``).
        group: the process group (default: the whole job).

    Returns:
        New tensors shaped like ``values``, identical on every rank.

    Raises:
        ValueError: a negative or non-finite weight, or weights summing to zero over the ranks.
        TypeError: a tensor that is not floating point.
    """
    tensors, single = _as_tensor_list("values", values)
    if not tensors:
        raise ValueError("values must hold at least one tensor, got an empty list")
    weight = check_nonnegative("weight", weight)
    for index, tensor in enumerate(tensors):
        if not tensor.is_floating_point():
            raise TypeError(
                f"values[{index}] must be a floating-point tensor, got dtype {tensor.dtype}"
            )
    scaled = [t.detach() * weight for t in tensors]
    # the weights travel with the values: one collective per dtype, the total in float64
    weight_entry = torch.tensor([weight], dtype=torch.float64, device=tensors[0].device)
    summed = _all_reduce_sum(scaled + [weight_entry], group)
    total = float(summed[-1])
    if total == 0.0:
        raise ValueError("weight is 0 on every rank: there is nothing to average")
    means = [s.div_(total) for s in summed[:-1]]
    return means[0] if single else means


class ShardedData:
    """This rank's part of data split across the ranks of a process group.

    Wherever :mod:`samhess.curvature` takes ``data`` (one ``(inputs, targets)`` batch or an
    iterable of batches), ``ShardedData(local_data)`` says that every rank holds its own part and
    that the quantity wanted is over the union: each rank sums its batches, weighted by batch
    size, then the sums and example counts are added over the ranks. ``H @ v``, the eigenpairs,
    traces, spectral densities and Fisher diagonals computed from it are therefore those of the
    mean loss over all the data, on every rank. Every rank must run the same computation with
    the same probe vectors (the estimators' seeded generators make them identical).

    The shards need not be equal, but none may be empty; split with
    :func:`samhess.distributed.shard_batch` or :func:`samhess.distributed.shard_range`
    (``DistributedSampler`` repeats examples to even the shards out, which changes the mean).

    Args:
        data: the local batch or iterable of batches.
        group: the process group (default: the whole job).
    """

    def __init__(self, data: Any, group: dist.ProcessGroup | None = None) -> None:
        if isinstance(data, ShardedData):
            raise TypeError("data is already a ShardedData")
        self.data = data
        self.group = group

    def __iter__(self) -> Iterator[Any]:
        """The local batches (a single ``(inputs, targets)`` batch yields itself once)."""
        if isinstance(self.data, tuple) and len(self.data) == 2 and all(
            isinstance(item, torch.Tensor) for item in self.data
        ):
            yield self.data
        else:
            yield from self.data

    def __repr__(self) -> str:
        return f"ShardedData({self.data!r})"


def sum_over_shards(
    data: Any,
    totals: list[torch.Tensor] | None,
    count: float,
    *,
    device: torch.device | str | None = None,
) -> tuple[list[torch.Tensor] | None, float]:
    r"""Add this rank's weighted sums to every other rank's, when ``data`` is sharded.

    The one reduction :mod:`samhess.curvature` performs: having summed
    :math:`\sum_b W_b q_b` over its own batches (``totals``) and their weights :math:`W_b`
    (``count``: examples, or the tokens a loss counts), each rank gets the sums and the total
    weight over every shard, so that dividing gives the mean over all the data. Two collectives:
    the weights (with the number of empty shards) in float64, then the sums. Data that is not a
    :class:`ShardedData`, or a world of one, is returned as it is.

    Args:
        data: the data the sums were taken over.
        totals: this rank's weighted sums (``None`` if it holds no example).
        count: this rank's total weight.
        device: where the count travels (the sums' device; required by NCCL for CUDA).

    Returns:
        ``(totals, count)`` over all ranks: new tensors, identical on every rank.

    Raises:
        ValueError: on every rank, when some rank holds no example (its sums have no shape to
            add, and the other ranks would otherwise wait for it forever).
    """
    if not isinstance(data, ShardedData) or not is_distributed():
        return totals, count
    if device is None:
        device = totals[0].device if totals else torch.device("cpu")
    counts = torch.tensor([count, float(count == 0)], dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=data.group)
    total, empty = counts.tolist()
    empty = int(empty)
    if empty:
        raise ValueError(
            f"{empty} rank(s) hold no examples of the ShardedData; every rank needs at least one "
            "(split with samhess.distributed.shard_batch or shard_range)"
        )
    return sum_over_ranks(totals, data.group), total


def on_main_process(
    function: Callable[..., Result],
    *args: Any,
    group: dist.ProcessGroup | None = None,
    **kwargs: Any,
) -> Result:
    """Call ``function`` on rank 0 only and give every rank its result, or its exception.

    For decisions that must be taken once and seen alike everywhere: claiming an output
    directory, reading a checkpoint from rank 0's disk. The result travels with
    ``torch.distributed.broadcast_object_list`` (pickled), so keep it small. An exception raised
    on rank 0 is raised on every rank (rank 0 re-raises the original; an exception that cannot
    be pickled reaches the others as a ``RuntimeError`` with its message), so no rank is left
    waiting for the others. Outside a process group it is ``function(*args, **kwargs)``.
    """
    if not is_distributed():
        return function(*args, **kwargs)
    payload: list[Any] = [None]
    error: BaseException | None = None
    if get_rank(group) == 0:
        try:
            payload = [(True, function(*args, **kwargs))]
        except Exception as exc:  # every rank must learn of it, or they wait forever
            error = exc
            try:
                pickle.dumps(exc)
                payload = [(False, exc)]
            except Exception:
                payload = [(False, RuntimeError(f"{type(exc).__name__}: {exc}"))]
    dist.broadcast_object_list(payload, src=_global_rank_zero(group), group=group)
    succeeded, value = payload[0]
    if error is not None:
        raise error
    if not succeeded:
        raise value
    return value


def _global_rank_zero(group: dist.ProcessGroup | None) -> int:
    return 0 if group is None else dist.get_global_rank(group, 0)
