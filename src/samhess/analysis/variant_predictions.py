r"""First-order predictions of the SAM variants' steps, registered by exact type.

Each rule is the "First order" section of the variant's docstring (:mod:`samhess.optim`), over a
plain SGD base, with :math:`\nabla L(w + e)` replaced by :math:`g + He`; a rule returns ``None``
where that form does not apply (another base optimizer, per-group radii).

* GSAM (Zhuang et al., ICLR 2022): with :math:`g_p = g + He`, :math:`\beta = \langle g,
  g_p\rangle/\lVert g_p\rVert^2` and :math:`g_\perp = g - \beta g_p`,
  :math:`D = -\eta (g_p - \alpha g_\perp) = -\eta\bigl((1 + \alpha\beta - \alpha) g +
  c (1 + \alpha\beta) H g\bigr)`, :math:`c = \rho/\lVert g\rVert`: a gain
  :math:`(1 + \alpha\beta - \alpha) + c(1 + \alpha\beta)\lambda` along an eigenvector;
* WSAM (Yue et al., KDD 2023): :math:`D = -\eta (g + \tfrac{\gamma}{1-\gamma} H e)`;
* FriendlySAM (Li et al., CVPR 2024): SAM's step with :math:`d = g - \sigma m_t` in place of
  :math:`g` in the perturbation, :math:`m_t = \lambda m_{t-1} + (1 - \lambda) g`;
* LookSAM (Liu et al., CVPR 2022): SAM's step on its SAM steps; on a reuse step, exactly
  :math:`D = -\eta (g + \alpha \lVert g\rVert g_v/\lVert g_v\rVert)` with the kept :math:`g_v`;
* m-SAM: :math:`D = -\eta\, \tfrac1m \sum_i (g_i + H_i e_i)` over the micro-batches;
* RST (Zhao et al., 2022): SAM's step or the gradient step, as the next draw of its generator
  says (read without advancing it, :meth:`~samhess.optim.RST.next_step_perturbs`).

BSAM (Möllenhoff & Khan, ICLR 2023) has none: its perturbation is the gradient at a random
point divided by a learned precision.
"""

from __future__ import annotations

from typing import Any

import torch

from samhess.analysis.predictions import (
    FirstOrderPrediction,
    PredictionContext,
    StepForm,
    gradient_step_prediction,
    perturbation,
    perturbation_scaling,
    register_prediction,
    sam_step_prediction,
    sharpness_aware_setting,
)
from samhess.curvature import HessianOperator
from samhess.curvature.batches import micro_batch
from samhess.curvature.vectors import flatten
from samhess.optim import GSAM, MSAM, RST, WSAM, FriendlySAM, LookSAM
from samhess.optim.friendly_sam import _AVERAGE
from samhess.optim.looksam import _ORTHOGONAL

__all__: list[str] = []


def _gsam_rule(optimizer: GSAM, context: PredictionContext) -> FirstOrderPrediction | None:
    setting = sharpness_aware_setting(optimizer, context)
    if setting is None or perturbation_scaling(optimizer, context.params) is not None:
        return None
    rho, _ = setting
    g = context.gradient
    norm = float(g.norm())
    if norm == 0.0:
        return None
    c = rho / norm
    lifted = g + c * context.hessian_gradient
    beta = float(g @ lifted) / float(lifted @ lifted)
    alpha = float(optimizer.alpha)
    intercept, coefficient = 1.0 + alpha * beta - alpha, c * (1.0 + alpha * beta)
    step = -context.rates * (intercept * g + coefficient * context.hessian_gradient)
    return FirstOrderPrediction(
        StepForm.SHARPNESS_AWARE, step, coefficient,
        "-lr (g_p - alpha g_perp), g_p = g + rho H g / ||g||",
        "(1 + alpha beta - alpha) + (1 + alpha beta) rho lambda / ||g||", intercept)


def _wsam_rule(optimizer: WSAM, context: PredictionContext) -> FirstOrderPrediction | None:
    gamma = float(optimizer.gamma)
    return sam_step_prediction(optimizer, context, descent_weight=gamma / (1.0 - gamma))


def _friendly_sam_rule(optimizer: FriendlySAM,
                       context: PredictionContext) -> FirstOrderPrediction | None:
    setting = sharpness_aware_setting(optimizer, context)
    if setting is None:
        return None
    rho, normalize = setting
    g = context.gradient
    previous = flatten([optimizer.state[p].get(_AVERAGE, torch.zeros_like(p))
                        for p in context.params]).to(g)
    average = optimizer.lmbda * previous + (1.0 - optimizer.lmbda) * g
    scaling = perturbation_scaling(optimizer, context.params)
    e = perturbation(g - optimizer.sigma * average, rho, normalize,
                     None if scaling is None else scaling.to(g))
    if e is None:
        return None
    return FirstOrderPrediction(StepForm.PERTURBED_GRADIENT,
                                -context.rates * (g + context.hessian @ e), None,
                                "-lr (g + H e), e = rho d / ||d||, d = g - sigma m_t")


def _sam_step_or(single_pass: Any) -> Any:
    """The rule of a variant that switches between SAM's step and a single-pass one
    (``single_pass(optimizer, context)``), as its :meth:`next_step_perturbs` says."""

    def rule(optimizer: Any, context: PredictionContext) -> FirstOrderPrediction | None:
        if optimizer.next_step_perturbs():
            return sam_step_prediction(optimizer, context)
        if sharpness_aware_setting(optimizer, context) is None:
            return None
        return single_pass(optimizer, context)

    return rule


def _looksam_reuse(optimizer: LookSAM, context: PredictionContext) -> FirstOrderPrediction:
    g = context.gradient
    kept = flatten([optimizer.state[p].get(_ORTHOGONAL, torch.zeros_like(p))
                    for p in context.params]).to(g)
    kept_norm = float(kept.norm())
    reuse = g if kept_norm == 0.0 else g + optimizer.alpha * float(g.norm()) * kept / kept_norm
    return FirstOrderPrediction(StepForm.PERTURBED_GRADIENT, -context.rates * reuse, None,
                                "-lr (g + alpha ||g|| g_v / ||g_v||)")


def _msam_rule(optimizer: MSAM, context: PredictionContext) -> FirstOrderPrediction | None:
    setting = sharpness_aware_setting(optimizer, context)
    if setting is None or context.model is None:
        return None
    rho, normalize = setting
    scaling = perturbation_scaling(optimizer, context.params)
    count = optimizer.micro_batches
    total: Any = 0.0
    for index in range(count):
        part = micro_batch(context.batch, index, count)
        operator = HessianOperator(context.model, context.loss_fn, [part], params=context.params,
                                   eval_mode=context.eval_mode)
        g_i = operator.gradient()
        e_i = perturbation(g_i, rho, normalize, None if scaling is None else scaling.to(g_i))
        total = total + g_i + (0.0 if e_i is None else operator @ e_i)
    return FirstOrderPrediction(StepForm.PERTURBED_GRADIENT, -context.rates * total / count, None,
                                "-lr mean_i (g_i + H_i e_i), e_i = rho g_i / ||g_i||")


register_prediction(GSAM, _gsam_rule)
register_prediction(WSAM, _wsam_rule)
register_prediction(FriendlySAM, _friendly_sam_rule)
register_prediction(LookSAM, _sam_step_or(_looksam_reuse))
register_prediction(RST, _sam_step_or(lambda _, context: gradient_step_prediction(context)))
register_prediction(MSAM, _msam_rule)
