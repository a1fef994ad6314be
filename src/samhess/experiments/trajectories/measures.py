r"""What a trajectory records: the loss and the full-batch curvature, or the gradient's bounce.

A measurement is called at every recorded step with the model at that step; it reads the
model only (through :class:`samhess.curvature.HessianOperator`, in eval mode, with seeded
estimators), so recording changes nothing about the trajectory. The curvature is that of the
loss over all of the problem's examples:

* ``lambda_max``: the top Hessian eigenvalue (restarted Lanczos, converged to the float64
  default tolerance);
* ``hessian_trace``: :math:`\operatorname{Tr} H` summed from the exact diagonal (one product
  per parameter: 2,410 on the default problem), so that a change of a fraction of a percent is
  a measurement rather than estimator noise;
* ``grad_norm``: :math:`\lVert \nabla L(w) \rVert`.

:class:`BounceMeasure` records, at every step, how the gradient lies on the top eigenvector
:math:`v_1`, recomputed every ``eigenvector_every`` steps with its sign kept continuous (a new
:math:`v_1` is flipped when it points against the one before), so that a sign change of
:math:`\langle g, v_1\rangle` is the gradient's, not Lanczos's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from samhess.curvature import HessianOperator, diagonal, eigenpairs
from samhess.experiments.tracking import evaluate
from samhess.experiments.trajectories.problem import Problem

__all__ = ["Measure", "CurvatureMeasure", "SharpnessMeasure", "BounceMeasure"]

#: Identity columns per product batch of the exact diagonal.
_DIAGONAL_BLOCK = 256


class Measure:
    """A record's measurement; the base measures the train loss only.

    Subclasses that carry state between records (:class:`BounceMeasure`) save it with the
    trajectory's checkpoint.
    """

    def __init__(self, problem: Problem, seed: int):
        self.problem = problem
        self.seed = seed

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        loss, _ = evaluate(model, self.problem.loss_fn, *self.problem.data, "regression")
        return {"train_loss": loss}

    def operator(self, model: nn.Module) -> HessianOperator:
        return HessianOperator(model, self.problem.loss_fn, self.problem.data)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class SharpnessMeasure(Measure):
    """Train loss, ``lambda_max`` and ``grad_norm``."""

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        operator = self.operator(model)
        top = eigenpairs(operator, 1, seed=self.seed)
        return {**super().__call__(model, step), "lambda_max": float(top.eigenvalues[0]),
                "grad_norm": float(operator.gradient().norm())}


class CurvatureMeasure(Measure):
    """Train loss, ``lambda_max``, the exact ``hessian_trace`` and ``grad_norm``."""

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        operator = self.operator(model)
        top = eigenpairs(operator, 1, seed=self.seed)
        trace = float(diagonal(operator, "exact", block_size=_DIAGONAL_BLOCK).sum())
        return {**super().__call__(model, step), "lambda_max": float(top.eigenvalues[0]),
                "hessian_trace": trace, "grad_norm": float(operator.gradient().norm())}


class BounceMeasure(Measure):
    r"""Train loss, ``grad_norm``, ``lambda_max`` and :math:`\langle g, v_1\rangle` per step.

    Args:
        problem: the problem.
        seed: the Lanczos start vector's seed.
        eigenvector_every: steps between recomputations of :math:`v_1` (and ``lambda_max``).
    """

    def __init__(self, problem: Problem, seed: int, eigenvector_every: int):
        super().__init__(problem, seed)
        self.eigenvector_every = eigenvector_every
        self.top_vector: torch.Tensor | None = None
        self.top_value: float | None = None

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any]:
        operator = self.operator(model)
        if self.top_vector is None or step % self.eigenvector_every == 0:
            top = eigenpairs(operator, 1, seed=self.seed)
            vector = top.eigenvectors[:, 0]
            if self.top_vector is not None and float(vector @ self.top_vector) < 0:
                vector = -vector
            self.top_vector, self.top_value = vector, float(top.eigenvalues[0])
        gradient = operator.gradient()
        return {**super().__call__(model, step), "grad_norm": float(gradient.norm()),
                "lambda_max": self.top_value,
                "gradient_on_top_eigenvector": float(gradient @ self.top_vector)}

    def state_dict(self) -> dict[str, Any]:
        return {"top_vector": self.top_vector, "top_value": self.top_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.top_vector, self.top_value = state["top_vector"], state["top_value"]
