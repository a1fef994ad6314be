"""Data as the curvature operators see it, and the one place where batches are summed.

``data`` is one batch ``(inputs, targets)`` (:mod:`samhess.curvature.batches`) or a re-iterable
collection of batches (a ``DataLoader``, a list). A tuple or list of two items is one batch,
unless both items are themselves pairs: ``[(x1, y1), (x2, y2)]`` is two batches, and so is a
pair of pairs, ``((a, b), (c, d))``; write a single batch whose inputs and targets are both
pairs as a list of one batch, ``[((a, b), (c, d))]``.

Every quantity in :mod:`samhess.curvature` is a mean over the data set,

.. math::

    \\bar q = \\frac{\\sum_b W_b \\, q_b}{\\sum_b W_b},

where :math:`q_b` is the quantity computed from the *mean* loss of batch :math:`b` and
:math:`W_b` the weight of that loss's units in the batch (:mod:`samhess.curvature.units`: its
examples, or its non-ignored tokens). A single batch and a loader over the same examples
therefore give the same operator.

:func:`mean_over_data` is the only function that performs this sum, and so the only place where
data spread over the ranks of a process group is reduced: for
:class:`samhess.distributed.ShardedData` it adds the weighted sums and the total weights over
the ranks (:func:`samhess.distributed.sum_over_shards`) before dividing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from samhess.curvature.batches import check_batch, describe, move_batch
from samhess.curvature.units import example_count
from samhess.distributed.collectives import ShardedData, sum_over_shards


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair rather than a collection of pairs."""
    return _is_pair(data) and not (_is_pair(data[0]) and _is_pair(data[1]))


def local_data(data: Any) -> Any:
    """This rank's part of ``data`` when it is a ``ShardedData``, else ``data`` itself."""
    return data.data if isinstance(data, ShardedData) else data


def holds_single_batch(data: Any) -> bool:
    """Whether ``data`` (this rank's part, if sharded) is one batch or a tuple or list of one.

    Operators keep the graph of such data between products.
    """
    local = local_data(data)
    return is_single_batch(local) or (
        isinstance(local, (tuple, list)) and len(local) == 1 and _is_pair(local[0])
    )


def check_data(data: Any) -> None:
    """Raise if ``data`` is neither one batch nor a re-iterable collection of batches.

    A one-shot iterator (a generator, ``iter(loader)``) is refused: operators read the data once
    per product, so it would be exhausted after the first one.
    """
    local = local_data(data)
    if is_single_batch(local):
        check_batch(local, "data")
        return
    if isinstance(local, (torch.Tensor, Mapping)) or not isinstance(local, Iterable):
        raise TypeError(
            "data must be an (inputs, targets) pair or an iterable of such pairs (e.g. a "
            f"DataLoader), got {describe(local)}"
        )
    if isinstance(local, Iterator):
        raise TypeError(
            "data must be re-iterable (a DataLoader, list or tuple of batches), got a one-shot "
            f"iterator of type {type(local).__name__}; wrap it in list(...)"
        )


def iterate_batches(data: Any, *, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[Any, Any]]:
    """Yield the batches of ``data`` (this rank's, if sharded) on ``device``, floating tensors in ``dtype``."""
    local = local_data(data)
    batches = (local,) if is_single_batch(local) else local
    for index, batch in enumerate(batches):
        check_batch(batch, f"batch {index} of data")
        yield move_batch(batch, device=device, dtype=dtype)


def mean_over_data(
    batch_mean: Callable[[Any, Any], Sequence[torch.Tensor]],
    data: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    weight: Callable[[Any], float] | None = None,
) -> tuple[list[torch.Tensor], float]:
    """Average per-batch quantities over the data set, weighting each batch by its loss's units.

    .. math::

        \\bar q_j = \\frac{\\sum_b W_b \\, q_{b,j}}{\\sum_b W_b}.

    Args:
        batch_mean: ``batch_mean(inputs, targets)`` returns the quantities
            :math:`(q_{b,1}, \\dots, q_{b,m})` of one batch, each computed from the batch's mean loss.
        data: one ``(inputs, targets)`` batch or a re-iterable collection of batches.
        device: where the batches are moved to.
        dtype: the floating dtype the batches are cast to.
        weight: :math:`W_b` = ``weight(targets)`` > 0, e.g. from
            :func:`samhess.curvature.units.weight_rule`; default the number of examples,
            ``targets.shape[0]``. It is asked only once a second batch arrives (or for sharded
            data): a lone batch's mean is itself, whatever its weight. Empty batches (targets
            with no entry) are skipped.

    Returns:
        The averaged quantities and the total weight :math:`\\sum_b W_b` (over every rank when
        ``data`` is a :class:`~samhess.distributed.ShardedData`; 1 for a lone batch).

    Raises:
        ValueError: if ``data`` holds no examples, or a batch's weight is invalid (the message
            names the batch).
        TypeError: for a batch that is not an ``(inputs, targets)`` pair.
    """
    weight = example_count if weight is None else weight

    def weight_of_batch(index: int, targets: Any) -> float:
        try:
            return float(weight(targets))
        except (TypeError, ValueError) as error:
            raise type(error)(f"batch {index} of data: {error}") from None

    sharded = isinstance(data, ShardedData)
    totals: list[torch.Tensor] | None = None
    count = 0.0
    lone: tuple[int, Any] | None = None  # the first batch, weighed only if another one follows
    for index, (inputs, targets) in enumerate(iterate_batches(data, device=device, dtype=dtype)):
        if isinstance(targets, torch.Tensor) and targets.numel() == 0:
            continue
        if lone is not None:
            count = weight_of_batch(*lone)
            for total in totals:
                total.mul_(count)
            lone = None
        size = weight_of_batch(index, targets) if sharded or totals is not None else 1.0
        quantities = batch_mean(inputs, targets)
        if totals is None:
            totals = [q.detach() * size for q in quantities]
            lone = None if sharded else (index, targets)
        else:
            for total, q in zip(totals, quantities):
                total.add_(q.detach(), alpha=size)
        count += size
    totals, count = sum_over_shards(data, totals, count, device=device)
    if totals is None or count == 0:
        raise ValueError("data holds no examples")
    return [total / count for total in totals], count
