"""Keep BatchNorm running statistics out of SAM's second forward pass.

SAM runs two forward passes per step, the second at the perturbed weights :math:`w + e`. In
training mode every BatchNorm layer would fold both passes into its running mean and variance
(and count both in ``num_batches_tracked``), so the statistics used at evaluation time would mix
in activations of weights the model never takes. Inside :func:`disable_running_stats` the layers
still normalize with the statistics of the current batch, exactly as in training, but leave
their running buffers untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["disable_running_stats"]


@contextmanager
def disable_running_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: BatchNorm layers of ``model`` do not update their running statistics.

    Every ``BatchNorm1d/2d/3d``, lazy BatchNorm and ``SyncBatchNorm`` layer that tracks running
    statistics has ``track_running_stats`` switched off for the duration of the block; in
    training mode such a layer normalizes with batch statistics (as before) and neither updates
    ``running_mean``/``running_var`` nor increments ``num_batches_tracked``. The flags are
    restored on exit, also when the block raises.

    Example:
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.first_step(zero_grad=True)
        >>> with disable_running_stats(model):
        ...     loss_fn(model(x), y).backward()
        >>> optimizer.second_step(zero_grad=True)

    Args:
        model: any module; its BatchNorm submodules are affected.

    Yields:
        ``model``.
    """
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for module in switched:
        module.track_running_stats = False
    try:
        yield model
    finally:
        for module in switched:
            module.track_running_stats = True
