"""Data as the curvature operators see it, and the one place where batches are summed.

Every quantity in :mod:`samhess.curvature` is a mean over the data set,

.. math::

    \\bar q = \\frac{\\sum_b n_b \\, q_b}{\\sum_b n_b},

where :math:`q_b` is the quantity computed from the *mean* loss of batch :math:`b` and
:math:`n_b` its number of examples (``inputs.shape[0]``). A single batch and a loader over the
same examples therefore give the same operator.

:func:`mean_over_data` is the only function that performs this sum, and so the only place where
data spread over the ranks of a process group is reduced: for
:class:`samhess.distributed.ShardedData` it adds the weighted sums and the example counts over
the ranks (:func:`samhess.distributed.sum_over_shards`) before dividing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from samhess.distributed.collectives import ShardedData, sum_over_shards

Batch = tuple[torch.Tensor, torch.Tensor]


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair rather than a collection of pairs."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(item, torch.Tensor) for item in data)
    )


def holds_single_batch(data: Any) -> bool:
    """Whether ``data``, or this rank's part of it when it is a ``ShardedData``, is one batch."""
    return is_single_batch(data.data if isinstance(data, ShardedData) else data)


def check_data(data: Any) -> None:
    """Raise if ``data`` is neither one batch nor a re-iterable collection of batches.

    A one-shot iterator (a generator, ``iter(loader)``) is refused: operators read the data once
    per product, so it would be exhausted after the first one.
    """
    if is_single_batch(data):
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an (inputs, targets) pair of tensors or an iterable of such pairs "
            f"(e.g. a DataLoader), got {type(data).__name__}"
        )
    if isinstance(data, Iterator):
        raise TypeError(
            "data must be re-iterable (a DataLoader, list or tuple of batches), got a one-shot "
            f"iterator of type {type(data).__name__}; wrap it in list(...)"
        )


def iterate_batches(
    data: Any, *, device: torch.device, dtype: torch.dtype
) -> Iterator[Batch]:
    """Yield the batches of ``data`` on ``device``; floating tensors are cast to ``dtype``.

    Casting lets a model converted with ``model.double()`` run on float32 data, so that float64
    works end to end. Integer targets (class labels, token ids) keep their dtype.
    """
    batches = (data,) if is_single_batch(data) else data
    for index, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                f"batch {index} of data must be an (inputs, targets) pair, got {type(batch).__name__}"
            )
        inputs, targets = batch
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError(f"batch {index} of data must hold two tensors")
        yield _to(inputs, device, dtype), _to(targets, device, dtype)


def _to(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def mean_over_data(
    batch_mean: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]],
    data: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[list[torch.Tensor], int]:
    """Average per-batch quantities over the data set, weighting each batch by its size.

    .. math::

        \\bar q_j = \\frac{\\sum_b n_b \\, q_{b,j}}{\\sum_b n_b},
        \\qquad n_b = \\text{inputs}_b\\text{.shape[0]}.

    Args:
        batch_mean: ``batch_mean(inputs, targets)`` returns the quantities
            :math:`(q_{b,1}, \\dots, q_{b,m})` of one batch, each computed from the batch's mean loss.
        data: one ``(inputs, targets)`` batch or a re-iterable collection of batches.
        device: where the batches are moved to.
        dtype: the floating dtype the batches are cast to.

    Returns:
        The averaged quantities and the number of examples :math:`\\sum_b n_b` (over every rank
        when ``data`` is a :class:`~samhess.distributed.ShardedData`).

    Raises:
        ValueError: if ``data`` holds no examples.
    """
    totals: list[torch.Tensor] | None = None
    count = 0
    for inputs, targets in iterate_batches(data, device=device, dtype=dtype):
        size = int(inputs.shape[0])
        if size == 0:
            continue
        quantities = batch_mean(inputs, targets)
        if totals is None:
            totals = [q.detach() * size for q in quantities]
        else:
            for total, q in zip(totals, quantities):
                total.add_(q.detach(), alpha=size)
        count += size
    totals, count = sum_over_shards(data, totals, count, device=device)
    if totals is None or count == 0:
        raise ValueError("data holds no examples")
    return [total / count for total in totals], count
