"""The Hessian as an explicit matrix, for small models: validation and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from samhess.curvature.data import mean_over_data
from samhess.curvature.hessian import HessianOperator
from samhess.curvature.operators import check_finite_loss
from samhess.curvature.vectors import flatten, unflatten


def dense_hessian(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Any,
    params: Iterable[torch.Tensor] | None = None,
    *,
    eval_mode: bool = True,
) -> torch.Tensor:
    """The ``(dim, dim)`` Hessian of the mean loss over ``data``, entry by entry.

    Each batch's Hessian :math:`\\nabla^2 L_b` comes from :func:`torch.func.hessian` (forward
    over reverse mode, all ``dim`` directions at once with ``vmap``) of the loss as a function of
    the flat parameter vector; batches are averaged by size like every operator. Memory grows
    like ``dim`` times one backward pass, so keep ``dim`` to a few thousand. Arguments as for
    :class:`~samhess.curvature.hessian.HessianOperator` (the same checks apply).
    """
    operator = HessianOperator(model, loss_fn, data, params, eval_mode=eval_mode)
    point = flatten(operator.params)

    def batch_hessian(inputs: torch.Tensor, targets: torch.Tensor):
        def loss_at(flat: torch.Tensor) -> torch.Tensor:
            return operator.loss_fn(operator._outputs(unflatten(flat, operator.params), inputs), targets)

        return torch.func.hessian(loss_at)(point), loss_at(point).detach()

    (matrix, loss), _ = mean_over_data(batch_hessian, data, device=operator.device, dtype=operator.dtype)
    check_finite_loss(loss, "Hessian")
    return (matrix + matrix.T) / 2
