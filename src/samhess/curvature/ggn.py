"""The generalized Gauss-Newton matrix of the mean loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samhess.curvature.jacobian import OutputJacobian
from samhess.curvature.logits import check_logits_of, find_logits
from samhess.curvature.operators import CurvatureOperator


@dataclass
class _GaussNewtonState:
    jacobian: OutputJacobian
    logits: torch.Tensor
    output_gradient: torch.Tensor | None  # gradient of the loss in the logits, with its graph
    loss: torch.Tensor


class GGNOperator(CurvatureOperator):
    """The generalized Gauss-Newton matrix :math:`G = J^\\top \\nabla^2_f L\\, J` of the mean loss.

    For a batch with logits :math:`f(w)` (all examples together) and batch-mean loss
    :math:`L(f)`,

    .. math::

        G_b = J_b^\\top \\, \\nabla^2_f L_b(f) \\, J_b, \\qquad
        G = \\frac{\\sum_b W_b G_b}{\\sum_b W_b},

    the Hessian with the second-derivative-of-the-network term dropped (Schraudolph, "Fast
    curvature matrix-vector products for second-order gradient descent", Neural Computation 2002;
    Martens, "New insights and perspectives on the natural gradient method", JMLR 2020). It is
    positive semi-definite for losses convex in the logits (cross-entropy, squared error), and
    for those it equals the Fisher of the model's predictive distribution.

    :math:`\\nabla^2_f L` is taken by autograd from ``loss_fn`` itself, so any loss works
    (weights, label smoothing, ignored tokens included) and no loss kind is needed. One product
    costs :math:`Jv` (double vjp), a Hessian-vector product of the loss in the logits, and
    :math:`J^\\top u`.

    The logits :math:`f` are found in the model's outputs by
    :func:`samhess.curvature.logits.find_logits`: the outputs themselves when they are a tensor,
    ``outputs["logits"]``, ``outputs.logits``, or ``logits_of(outputs)``; ``loss_fn`` still
    receives the whole outputs.

    Takes the arguments of :class:`~samhess.curvature.hessian.HessianOperator` except ``method``,
    and ``logits_of``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        data: Any,
        params: Iterable[torch.Tensor] | None = None,
        *,
        eval_mode: bool = True,
        cache_graph: bool = True,
        weight_of: Callable[[Any], Any] | None = None,
        logits_of: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.logits_of = check_logits_of(logits_of)
        super().__init__(
            model, loss_fn, data, params, eval_mode=eval_mode, cache_graph=cache_graph, weight_of=weight_of
        )

    def _prepare(self, inputs: Any, targets: Any) -> _GaussNewtonState:
        leaves = self._leaves()
        outputs = self._outputs(leaves, inputs)
        logits = find_logits(outputs, self.logits_of)
        loss = self.loss_fn(outputs, targets)
        output_gradient = None
        if logits.requires_grad:
            # Differentiated again in the logits, this is the loss's Hessian in them with the
            # network held fixed: autograd stops at ``logits``.
            (output_gradient,) = torch.autograd.grad(loss, logits, create_graph=True, allow_unused=True)
        return _GaussNewtonState(OutputJacobian(logits, leaves), logits, output_gradient, loss.detach())

    def _apply(self, state: _GaussNewtonState, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        jv = state.jacobian.jvp(vector)
        hjv = None
        if state.output_gradient is not None and state.output_gradient.requires_grad:
            (hjv,) = torch.autograd.grad(
                state.output_gradient, state.logits, jv, retain_graph=True, allow_unused=True
            )
        if hjv is None:  # the loss is linear in the logits
            hjv = torch.zeros_like(jv)
        return state.jacobian.vjp(hjv)
