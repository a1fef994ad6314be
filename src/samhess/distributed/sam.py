r"""SAM's two passes under DistributedDataParallel, with global or per-replica perturbations.

With DistributedDataParallel (DDP) every synchronized backward pass leaves the gradient of the
global mean loss on every rank. One SAM step on a global batch split into shards
:math:`B_1, \dots, B_W` can therefore take its ascent in two ways:

* **global** (default): the first backward pass is synchronized, so every rank perturbs by
  :math:`e = \rho\, g / \lVert g \rVert` with :math:`g = \nabla L_B(w)` the *global* gradient;
  the second (synchronized) pass gives :math:`\nabla L_B(w + e)`. This is exactly the
  single-process SAM step on the whole batch.
* **per replica** (m-sharpness with :math:`m = |B_r|`, Andriushchenko & Flammarion, 2022): the
  first forward *and* backward pass run inside ``ddp_model.no_sync()``, so rank :math:`r`
  perturbs by its own :math:`e_r = \rho\, g_r / \lVert g_r \rVert`, :math:`g_r = \nabla
  L_{B_r}(w)`; the second pass is synchronized, so the base optimizer steps every rank with

  .. math::

      \sum_r \frac{|B_r|}{|B|}\, \nabla L_{B_r}(w + e_r),

  the average of the single-process SAM gradients of the shards. The forward pass must be
  inside ``no_sync`` as well as the backward: DDP prepares the gradient all-reduce during the
  forward pass.

Either way all ranks restore the same :math:`w` and apply the same averaged gradient, so the
weights stay identical across ranks. Exact agreement with a single process needs a model
without BatchNorm (or with ``torch.nn.SyncBatchNorm``): plain BatchNorm normalizes each shard
with its own statistics.

References:
    P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-Aware Minimization for Efficiently
    Improving Generalization. ICLR 2021.

    M. Andriushchenko, N. Flammarion. Towards Understanding Sharpness-Aware Minimization.
    ICML 2022 (m-sharpness, Section 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from samhess._validation import check_bool, check_positive

__all__ = ["ascent_pass", "sam_step"]


def ascent_pass(model: nn.Module, per_replica: bool) -> contextlib.AbstractContextManager:
    """The context for SAM's first forward and backward pass.

    ``model.no_sync()`` when ``per_replica`` is true and ``model`` is a
    ``DistributedDataParallel`` (the gradient then stays local to the rank); otherwise a context
    that does nothing, so the pass is synchronized as usual.
    """
    if per_replica and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def sam_step(
    model: nn.Module,
    optimizer: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    per_replica: bool = False,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    r"""One SAM step on this rank's shard, with the ascent from the global or the local gradient.

    The two passes, in order:

    1. inside :func:`ascent_pass` (``no_sync`` for ``per_replica``): forward, backward of the
       shard's mean loss (times ``loss_scale`` unless ``per_replica``), ``first_step``;
    2. synchronized, with BatchNorm running statistics frozen
       (:func:`samhess.optim.disable_running_stats`): forward, backward of the shard's mean loss
       times ``loss_scale``, ``second_step``.

    Outside a process group, or with a model that is not DDP, it is the ordinary single-process
    SAM step.

    Args:
        model: the ``DistributedDataParallel``-wrapped model, in train mode.
        optimizer: a :class:`samhess.optim.SAM` (or an :class:`samhess.optim.IRE` over one): any
            object with ``zero_grad``, ``first_step`` and ``second_step``.
        loss_fn: ``loss_fn(outputs, targets)`` -> the mean loss over the shard.
        inputs: this rank's inputs (:attr:`Shard.inputs`).
        targets: this rank's targets.
        per_replica: perturb each rank by its own shard's gradient (m-sharpness).
        loss_scale: :attr:`Shard.loss_scale`, :math:`W n_r / n`, so that unequal shards still
            average to the global mean (1 for equal shards). The per-replica ascent uses the
            unscaled local loss, so that USAM's :math:`e_r = \rho g_r` is the shard's own.

    Returns:
        This rank's mean loss at :math:`w` (before the step), detached. Average it over ranks,
        weighted by shard sizes (:func:`weighted_mean_over_ranks`), for the global batch loss.
    """
    from samhess.optim import disable_running_stats

    loss_scale = check_positive("loss_scale", loss_scale)
    check_bool("per_replica", per_replica)
    optimizer.zero_grad(set_to_none=True)
    with ascent_pass(model, per_replica):
        loss = loss_fn(model(inputs), targets)
        (loss if per_replica or loss_scale == 1.0 else loss * loss_scale).backward()
    # A variant may take a single-pass step (LookSAM between its SAM steps, RST's base steps):
    # first_step then says the second pass is not needed.
    if optimizer.first_step(zero_grad=True) is not False:
        with disable_running_stats(model):
            perturbed_loss = loss_fn(model(inputs), targets)
            (perturbed_loss if loss_scale == 1.0 else perturbed_loss * loss_scale).backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach()
