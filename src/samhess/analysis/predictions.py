r"""First-order predictions of one optimizer step, registered by the optimizer's exact type.

The seed note's claims are statements about one step :math:`D` from weights :math:`w` on a batch
with gradient :math:`g` and Hessian :math:`H`, to first order in the perturbation:

* SGD (no momentum, no weight decay): :math:`D = -\eta g`, exactly;
* SAM over such SGD: :math:`D \approx -\eta\,(g + \rho H g/\lVert g\rVert)` (Foret et al.,
  ICLR 2021), from :math:`\nabla L(w + e) \approx g + He`; USAM:
  :math:`-\eta\,(g + \rho H g)` (Andriushchenko & Flammarion, ICML 2022);
* ASAM over such SGD: :math:`D \approx -\eta\,(g + H e)` with
  :math:`e = \rho\, T^2 g/\lVert T g\rVert`, :math:`T = \operatorname{diag}(|w|)` (Kwon et al.,
  ICML 2021): not a multiple of :math:`Hg`, so its gains along eigenvectors are no line in
  :math:`\lambda`;
* IRE over any base with step :math:`D_\text{base}`: :math:`D = (I + \kappa M) D_\text{base}`
  with :math:`M = \operatorname{diag}(m)` its 0/1 mask of flat coordinates, exactly (Wang et
  al., NeurIPS 2024).

Each rule is registered for one class, and looked up by ``type(optimizer)`` exactly: a subclass
(a SAM variant that changes the perturbation or the descent gradient, a user's SGD that changes
the update) inherits nothing and has no prediction until a rule is registered for it. This is
what keeps a variant from being judged against its parent's theory. :func:`register_prediction`
adds a rule for another optimizer class.

A :class:`FirstOrderPrediction` carries its :class:`StepForm` and coefficient as data; its
``formula`` is for display only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from samhess.curvature import HessianOperator
from samhess.curvature.vectors import flatten
from samhess.optim import ASAM, IRE, SAM, USAM

__all__ = [
    "StepForm",
    "FirstOrderPrediction",
    "PredictionContext",
    "PredictionRule",
    "register_prediction",
    "prediction_rule",
    "predict_step",
]


class StepForm(enum.Enum):
    """The shape of a predicted step, which decides what its per-direction gains look like."""

    #: :math:`D = -\eta g`: every gain against the gradient step is 1.
    GRADIENT = "gradient"
    #: :math:`D = -\eta (a g + c H g)`: along an eigenvector the gain is :math:`a + c\lambda`
    #: (:math:`a = 1` for SAM and USAM).
    SHARPNESS_AWARE = "sharpness_aware"
    #: :math:`D = -\eta (g + H e)` for a perturbation :math:`e` that is not a multiple of
    #: :math:`g`: a gain per direction, no line in :math:`\lambda`.
    PERTURBED_GRADIENT = "perturbed_gradient"
    #: :math:`D = (I + \kappa M) \hat D_\text{base}`: IRE over a base step.
    AMPLIFIED = "amplified"


@dataclass(frozen=True)
class FirstOrderPrediction:
    r"""The theory's step for one optimizer from one state.

    Attributes:
        form: the step's :class:`StepForm`.
        step: the predicted flat step :math:`\hat D`.
        coefficient: :math:`c` of :math:`-\eta (a g + c Hg)` for :attr:`StepForm.SHARPNESS_AWARE`
            (:math:`\rho/\lVert g\rVert` for SAM, :math:`\rho` for USAM) and 0 for
            :attr:`StepForm.GRADIENT`; ``None`` for the other forms.
        intercept: :math:`a` of the same form (1 but for GSAM).
        formula: the step's formula, for display.
        gain_formula: the gain along an eigenvector for the forms that have one
            (``"1 + rho lambda / ||g||"``), for display; empty otherwise.
    """

    form: StepForm
    step: torch.Tensor
    coefficient: float | None = None
    formula: str = ""
    gain_formula: str = ""
    intercept: float = 1.0

    @property
    def gain_is_linear_in_eigenvalue(self) -> bool:
        """Whether the gain along an eigenvector is :math:`a + c\\lambda` (against
        :math:`-\\eta g`)."""
        return self.form in (StepForm.GRADIENT, StepForm.SHARPNESS_AWARE)


@dataclass
class PredictionContext:
    r"""What a rule may use: the Hessian of the batch, :math:`g`, the learning rates, the reference.

    Attributes:
        hessian: :class:`~samhess.curvature.HessianOperator` of the mean batch loss at :math:`w`.
        gradient: the flat gradient :math:`g` at :math:`w`.
        rates: per-coordinate learning rates :math:`\eta` of the measured optimizer's groups.
        params: the coordinates, in the Hessian operator's order.
        reference: the reference optimizer of the measurement (``None`` for the gradient step,
            or a flat tensor).
        reference_step: the measured reference step :math:`D_\text{ref}`.
        model, loss_fn, batch, eval_mode: what the step was measured on, for rules that need
            more than the batch's Hessian (m-SAM's micro-batch Hessians).
    """

    hessian: HessianOperator
    gradient: torch.Tensor
    rates: torch.Tensor
    params: Sequence[torch.Tensor]
    reference: Any = None
    reference_step: torch.Tensor | None = None
    model: Any = None
    loss_fn: Any = None
    batch: Any = None
    eval_mode: bool = True

    @cached_property
    def hessian_gradient(self) -> torch.Tensor:
        """:math:`Hg`, computed once and only if a rule needs it."""
        return self.hessian @ self.gradient


#: A rule: the optimizer and the context in, the prediction (or ``None`` where the theory gives
#: none from this state) out.
PredictionRule = Callable[[Any, PredictionContext], "FirstOrderPrediction | None"]

_RULES: dict[type, PredictionRule] = {}


def register_prediction(optimizer_class: type, rule: PredictionRule) -> None:
    """Register ``rule`` as the first-order prediction of exactly ``optimizer_class``.

    Subclasses are not covered: register each class whose step the rule describes.

    Raises:
        TypeError: ``optimizer_class`` is not a class or ``rule`` is not callable.
    """
    if not isinstance(optimizer_class, type):
        raise TypeError(f"optimizer_class must be a class, got {optimizer_class!r}")
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {rule!r}")
    _RULES[optimizer_class] = rule


def prediction_rule(optimizer: Any) -> PredictionRule | None:
    """The rule registered for ``type(optimizer)`` exactly, or ``None``."""
    return _RULES.get(type(optimizer))


def predict_step(optimizer: Any, context: PredictionContext) -> FirstOrderPrediction | None:
    """The first-order prediction of ``optimizer``'s next step, or ``None`` (fail closed)."""
    rule = prediction_rule(optimizer)
    return None if rule is None else rule(optimizer, context)


# -- the built-in rules ----------------------------------------------------------------------------


def steps_plain_gradient(optimizer: Any) -> bool:
    """Whether one step of ``optimizer`` is exactly :math:`-\\eta g`: torch's own SGD class (no
    subclass) without momentum, weight decay or ``maximize``."""
    if type(optimizer) is not torch.optim.SGD:
        return False
    return all(
        group.get("momentum", 0) == 0
        and group.get("weight_decay", 0) == 0
        and not group.get("maximize", False)
        for group in optimizer.param_groups
    )


def _same_parameters(optimizer: Any, params: Sequence[torch.Tensor]) -> bool:
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]
               if p.requires_grad}
    return stepped == {id(p) for p in params}


def gradient_step_prediction(context: PredictionContext) -> FirstOrderPrediction:
    r"""The plain gradient step :math:`-\eta g`."""
    return FirstOrderPrediction(StepForm.GRADIENT, -context.rates * context.gradient, 0.0,
                                "-lr g", "1")


def _gradient_rule(optimizer: Any, context: PredictionContext) -> FirstOrderPrediction | None:
    return gradient_step_prediction(context) if steps_plain_gradient(optimizer) else None


def _uniform(groups: Sequence[dict[str, Any]], key: str) -> Any:
    values = {group[key] for group in groups}
    return values.pop() if len(values) == 1 else None


def sharpness_aware_setting(optimizer: Any, context: PredictionContext) -> tuple[float, bool] | None:
    """``(rho, normalize)`` of a SAM-type optimizer whose first-order step has a closed form here:
    a plain SGD base, the measured parameters, one ``rho`` and one ``normalize`` for every
    group; ``None`` otherwise."""
    groups = optimizer.param_groups
    rho, normalize = _uniform(groups, "rho"), _uniform(groups, "normalize")
    if (not steps_plain_gradient(optimizer.base_optimizer)
            or not _same_parameters(optimizer, context.params)
            or rho is None or normalize is None):
        return None
    return float(rho), bool(normalize)


def perturbation_scaling(optimizer: Any, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    r"""The flat diagonal :math:`T` of a SAM-type optimizer's perturbation at the current weights
    (``None`` for the identity), from its own definition of :math:`T` (ASAM's :math:`|w|`, or
    :math:`|w| + \eta` on weights only)."""
    scale_of: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        members = list(group["params"])
        scales = optimizer._scaling(group, members) or [None] * len(members)
        for p, scale in zip(members, scales):
            if scale is not None:
                scale_of[id(p)] = scale.detach()
    if not scale_of:
        return None
    return torch.cat([scale_of.get(id(p), torch.ones_like(p)).reshape(-1) for p in params])


def perturbation(direction: torch.Tensor, rho: float, normalize: bool,
                 scaling: torch.Tensor | None) -> torch.Tensor | None:
    r""":math:`e = \rho\, T^2 d/\lVert T d\rVert` (or :math:`\rho\, T^2 d` unnormalized);
    ``None`` when the normalized form divides by zero."""
    scaled = direction if scaling is None else scaling * direction
    if not normalize:
        return rho * (scaled if scaling is None else scaling * scaled)
    norm = float(scaled.norm())
    if norm == 0.0:
        return None
    return rho * (scaled if scaling is None else scaling * scaled) / norm


def sam_step_prediction(optimizer: Any, context: PredictionContext, *, descent_weight: float = 1.0,
                        name: str = "") -> FirstOrderPrediction | None:
    r"""The first-order step :math:`-\eta (g + w H e)` of a SAM-type optimizer perturbing along
    :math:`g` (SAM, USAM, ASAM; WSAM with :math:`w = \gamma/(1-\gamma)`). Without a scaling
    :math:`T` it is :attr:`StepForm.SHARPNESS_AWARE` with :math:`c = w\rho/\lVert g\rVert`
    (:math:`w\rho` unnormalized)."""
    setting = sharpness_aware_setting(optimizer, context)
    if setting is None:
        return None
    rho, normalize = setting
    g = context.gradient
    scaling = perturbation_scaling(optimizer, context.params)
    weight = "" if descent_weight == 1.0 else f"{descent_weight:g} "
    if scaling is None:
        norm = float(g.norm())
        if normalize and norm == 0.0:
            return None
        coefficient = descent_weight * (rho / norm if normalize else rho)
        formulas = ((f"-lr (g + {weight}rho H g / ||g||)", f"1 + {weight}rho lambda / ||g||")
                    if normalize else
                    (f"-lr (g + {weight}rho H g)", f"1 + {weight}rho lambda"))
        step = -context.rates * (g + coefficient * context.hessian_gradient)
        return FirstOrderPrediction(StepForm.SHARPNESS_AWARE, step, coefficient, *formulas)
    e = perturbation(g, rho, normalize, scaling.to(g))
    if e is None:
        return None
    step = -context.rates * (g + descent_weight * (context.hessian @ e))
    formula = f"-lr (g + {weight}H e), e = rho T^2 g / ||T g||" if normalize else \
        f"-lr (g + {weight}H e), e = rho T^2 g"
    return FirstOrderPrediction(StepForm.PERTURBED_GRADIENT, step, None, formula)


def _sam_family_rule(optimizer: Any, context: PredictionContext) -> FirstOrderPrediction | None:
    r"""SAM, USAM and ASAM over plain SGD: :math:`-\eta (g + H e)` with the class's :math:`e`."""
    return sam_step_prediction(optimizer, context)


def ire_amplification(ire: IRE, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    r"""The flat vector :math:`\kappa_t m` IRE applies at its next step (``None``: none)."""
    if ire.mask is None or ire.step_count < ire.start_step or ire.kappa == 0.0:
        return None
    kappa_of, mask_of = {}, {}
    for index, group in enumerate(ire.param_groups):
        kappa = ire.current_kappa(index)
        for p in group["params"]:
            kappa_of[id(p)] = kappa
    stepped = [p for group in ire.param_groups for p in group["params"]]
    for p, mask in zip(stepped, ire.mask):
        mask_of[id(p)] = mask
    return torch.cat(
        [kappa_of[id(p)] * mask_of[id(p)].reshape(-1).to(dtype=p.dtype) for p in params]
    )


def _ire_rule(optimizer: IRE, context: PredictionContext) -> FirstOrderPrediction | None:
    r""":math:`(I + \kappa M) \hat D_\text{base}`, with :math:`\hat D_\text{base}` the measured
    reference step when the reference is IRE's own inner optimizer (then exact)."""
    inner = optimizer.optimizer
    if context.reference is inner:
        base = FirstOrderPrediction(StepForm.AMPLIFIED, context.reference_step, None, "D_ref")
    else:
        base = predict_step(inner, context)
        if base is None:
            return None
    amplification = ire_amplification(optimizer, context.params)
    if amplification is None:
        return base
    return FirstOrderPrediction(StepForm.AMPLIFIED, base.step + amplification * base.step, None,
                                f"(I + kappa M)[{base.formula}]")


register_prediction(torch.optim.SGD, _gradient_rule)
register_prediction(SAM, _sam_family_rule)
register_prediction(USAM, _sam_family_rule)
register_prediction(ASAM, _sam_family_rule)
register_prediction(IRE, _ire_rule)
