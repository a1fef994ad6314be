"""The generalized Gauss-Newton matrix of the mean loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from samhess.curvature.jacobian import OutputJacobian
from samhess.curvature.operators import CurvatureOperator


@dataclass
class _GaussNewtonState:
    jacobian: OutputJacobian
    outputs: torch.Tensor  # detached copy the loss is differentiated at
    output_gradient: torch.Tensor  # gradient of the loss in the outputs, with its graph
    loss: torch.Tensor


class GGNOperator(CurvatureOperator):
    """The generalized Gauss-Newton matrix :math:`G = J^\\top \\nabla^2_f L\\, J` of the mean loss.

    For a batch with outputs :math:`f(w)` (all examples together) and batch-mean loss
    :math:`L(f)`,

    .. math::

        G_b = J_b^\\top \\, \\nabla^2_f L_b(f) \\, J_b, \\qquad
        G = \\frac{\\sum_b n_b G_b}{\\sum_b n_b},

    the Hessian with the second-derivative-of-the-network term dropped (Schraudolph, "Fast
    curvature matrix-vector products for second-order gradient descent", Neural Computation 2002;
    Martens, "New insights and perspectives on the natural gradient method", JMLR 2020). It is
    positive semi-definite for losses convex in the outputs (cross-entropy, squared error), and
    for those it equals the Fisher of the model's predictive distribution.

    :math:`\\nabla^2_f L` is taken by autograd from ``loss_fn`` itself, so any loss works
    (weights, label smoothing included) and no loss kind is needed. One product costs
    :math:`Jv` (double vjp), a Hessian-vector product of the loss in the outputs, and
    :math:`J^\\top u`.

    Takes the arguments of :class:`~samhess.curvature.hessian.HessianOperator` except ``method``.
    """

    def _prepare(self, inputs: torch.Tensor, targets: torch.Tensor) -> _GaussNewtonState:
        leaves = self._leaves()
        outputs = self._outputs(leaves, inputs)
        at = outputs.detach().requires_grad_(True)
        loss = self.loss_fn(at, targets)
        (output_gradient,) = torch.autograd.grad(loss, at, create_graph=True)
        return _GaussNewtonState(OutputJacobian(outputs, leaves), at, output_gradient, loss.detach())

    def _apply(self, state: _GaussNewtonState, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        jv = state.jacobian.jvp(vector)
        if state.output_gradient.requires_grad:
            (hjv,) = torch.autograd.grad(
                state.output_gradient, state.outputs, jv, retain_graph=True, allow_unused=True
            )
        else:  # the loss is linear in the outputs
            hjv = None
        if hjv is None:
            hjv = torch.zeros_like(jv)
        return state.jacobian.vjp(hjv)
