"""The Hessian as an explicit matrix, for small models: validation and tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from samhess.curvature.hessian import HessianOperator


def dense_hessian(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data: Any,
    params: Iterable[torch.Tensor] | None = None,
    *,
    eval_mode: bool = True,
    weight_of: Callable[[Any], Any] | None = None,
    block_size: int = 256,
) -> torch.Tensor:
    """The ``(dim, dim)`` Hessian of the mean loss over ``data``, column by column.

    Column :math:`j` is :math:`H e_j = \\nabla_w \\langle \\nabla_w \\bar L(w), e_j \\rangle`, one
    backward pass through the gradient's graph (reverse over reverse, Pearlmutter 1994), so the
    matrix costs ``dim`` backward passes and is exact for every model PyTorch differentiates
    twice: LayerNorm, embeddings and tied weights included. (``torch.func.hessian``, which
    batches the directions with ``vmap``, is wrong through ``layer_norm`` in torch 2.13.)
    The result is symmetrized, :math:`(H + H^\\top)/2`. Batches are averaged as every operator
    averages them; arguments as for :class:`~samhess.curvature.hessian.HessianOperator` (the
    same checks apply). Memory: ``block_size`` columns of ``dim`` at a time, plus the matrix.
    """
    operator = HessianOperator(
        model, loss_fn, data, params, eval_mode=eval_mode, method="double-backward", weight_of=weight_of
    )
    matrix = operator.to_dense(block_size=block_size)
    return (matrix + matrix.T) / 2
