r"""One optimizer step measured, with the reference step and the theory's prediction of it.

The seed note's claims are statements about one step :math:`D` from weights :math:`w` on a batch
with gradient :math:`g` and Hessian :math:`H`, to first order in the perturbation:

* SGD (no momentum, no weight decay): :math:`D = -\eta g`, exactly;
* SAM over such SGD: :math:`D \approx -\eta\,(g + \rho H g/\lVert g\rVert)`
  (USAM: :math:`-\eta\,(g + \rho H g)`), from :math:`\nabla L(w + e) \approx g + He`;
* IRE over any base with step :math:`D_\text{base}`:
  :math:`D = (I + \kappa M) D_\text{base}` with :math:`M = \operatorname{diag}(m)` its 0/1 mask
  of flat coordinates, exactly (Wang et al., NeurIPS 2024).

:func:`measure_steps` takes the real step with the real optimizer, the reference step (by
default the plain gradient step :math:`-\eta g` with the optimizer's learning rates) and the
predicted step where the theory gives one, and leaves the model and the optimizers exactly as it
found them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from samhess.analysis._steps import (
    check_batch,
    describe_optimizer,
    evaluation_mode,
    learning_rates,
    measure_step,
    optimizer_chain,
    optimizer_parameters,
    preserved_training_state,
    resolve_parameters,
)
from samhess.curvature import HessianOperator
from samhess.optim import IRE, SAM

__all__ = ["StepMeasurement", "measure_steps"]

GRADIENT_STEP = "gradient step -lr g"
GIVEN_STEP = "given step"


@dataclass
class StepMeasurement:
    r"""The measured step, the reference step and the prediction, as flat vectors.

    Attributes:
        optimizer: description of the optimizer (e.g. ``"IRE(SAM(SGD))"``).
        reference: description of the reference step.
        gradient: :math:`g`, the flat gradient of the mean batch loss at :math:`w`.
        step: :math:`D`, the optimizer's real step.
        reference_step: :math:`D_\text{ref}`.
        learning_rates: per-coordinate learning rate :math:`\eta` of the optimizer's groups.
        predicted_step: the theory's :math:`D` (``None`` where it gives none).
        prediction_formula: the formula of ``predicted_step``.
        sam_coefficient: :math:`c` in :math:`D = -\eta (g + c H g)` when the step has that form
            without an IRE amplification (:math:`\rho/\lVert g\rVert` for SAM, :math:`\rho` for
            USAM, 0 for SGD), else ``None``.
        gain_reference_is_gradient: whether ``reference_step`` is :math:`-\eta g` with one
            learning rate for every coordinate, the case where an eigenvector's predicted gain
            is :math:`1 + c\lambda`.
    """

    optimizer: str
    reference: str
    gradient: torch.Tensor
    step: torch.Tensor
    reference_step: torch.Tensor
    learning_rates: torch.Tensor
    predicted_step: torch.Tensor | None
    prediction_formula: str
    sam_coefficient: float | None
    gain_reference_is_gradient: bool

    @property
    def lr(self) -> float:
        """The learning rate of the first coordinate's group."""
        return float(self.learning_rates[0])


@dataclass
class _Prediction:
    step: torch.Tensor
    formula: str
    sam_coefficient: float | None


@dataclass
class _Context:
    hessian: HessianOperator
    gradient: torch.Tensor
    rates: torch.Tensor
    params: Sequence[torch.Tensor]
    reference: Any
    reference_step: torch.Tensor

    @cached_property
    def hessian_gradient(self) -> torch.Tensor:
        """:math:`Hg`, computed only if a prediction needs it."""
        return self.hessian @ self.gradient


def _is_optimizer(value: object) -> bool:
    return callable(getattr(value, "step", None)) and hasattr(value, "param_groups")


def _steps_plain_gradient(optimizer: Any) -> bool:
    """Whether one step of ``optimizer`` is exactly :math:`-\\eta g`."""
    if not isinstance(optimizer, torch.optim.SGD):
        return False
    if type(optimizer).step is not torch.optim.SGD.step:  # a subclass may change the update
        return False
    return all(
        group.get("momentum", 0) == 0
        and group.get("weight_decay", 0) == 0
        and not group.get("maximize", False)
        for group in optimizer.param_groups
    )


def _same_parameters(optimizer: Any, params: Sequence[torch.Tensor]) -> bool:
    stepped = {id(p) for p in optimizer_parameters(optimizer) if p.requires_grad}
    return stepped == {id(p) for p in params}


def _ire_amplification(ire: IRE, params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    r"""The flat vector :math:`\kappa_t m` IRE applies at its next step (``None``: none)."""
    if ire.mask is None or ire.step_count < ire.start_step or ire.kappa == 0.0:
        return None
    kappa_of, mask_of = {}, {}
    for index, group in enumerate(ire.param_groups):
        kappa = ire.current_kappa(index)
        for p in group["params"]:
            kappa_of[id(p)] = kappa
    for p, mask in zip(optimizer_parameters(ire), ire.mask):
        mask_of[id(p)] = mask
    return torch.cat(
        [kappa_of[id(p)] * mask_of[id(p)].reshape(-1).to(dtype=p.dtype) for p in params]
    )


def _predict(optimizer: Any, context: _Context) -> _Prediction | None:
    if isinstance(optimizer, IRE):
        inner = optimizer.optimizer
        if context.reference is inner:
            base = _Prediction(context.reference_step, "D_ref", None)
        else:
            base = _predict(inner, context)
            if base is None:
                return None
        amplification = _ire_amplification(optimizer, context.params)
        if amplification is None:
            return base
        return _Prediction(
            base.step + amplification * base.step, f"(I + kappa M)[{base.formula}]", None
        )
    if isinstance(optimizer, SAM):
        groups = optimizer.param_groups
        if (
            not _steps_plain_gradient(optimizer.base_optimizer)
            or not _same_parameters(optimizer, context.params)
            or any(group["adaptive"] for group in groups)
            or len({float(group["rho"]) for group in groups}) != 1
            or len({bool(group["normalize"]) for group in groups}) != 1
        ):
            return None
        rho = float(groups[0]["rho"])
        g = context.gradient
        if groups[0]["normalize"]:
            norm = float(g.norm())
            if norm == 0.0:
                return None
            coefficient, formula = rho / norm, "-lr (g + rho H g / ||g||)"
        else:
            coefficient, formula = rho, "-lr (g + rho H g)"
        step = -context.rates * (g + coefficient * context.hessian_gradient)
        return _Prediction(step, formula, coefficient)
    if _steps_plain_gradient(optimizer):
        return _Prediction(-context.rates * context.gradient, "-lr g", 0.0)
    return None


def measure_steps(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: Any,
    reference: Any = None,
    *,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> StepMeasurement:
    r"""Take one real step of ``optimizer`` (and of ``reference``) on ``batch`` and undo it.

    The parameters, buffers and gradients of the model, the optimizers' state (every optimizer
    in a wrapping chain: IRE's inner optimizer, SAM's base optimizer, with their momentum
    buffers, Adam moments, step counts and IRE's step count), the modules' train/eval mode and
    the torch random number generators are the same afterwards as before, bit for bit.

    Args:
        model: the network at weights :math:`w`.
        loss_fn: ``loss_fn(model(inputs), targets)`` -> mean batch loss.
        batch: ``(inputs, targets)``; the optimizer's closure runs on it.
        optimizer: any torch optimizer, :class:`~samhess.optim.SAM` (stepped through
            ``step(closure)``) or :class:`~samhess.optim.IRE` over any of them.
        reference: ``None`` for the gradient step :math:`-\eta g` with the optimizer's
            per-group learning rates, another optimizer over the same parameters (stepped from
            the same state and undone, e.g. ``ire.optimizer`` for IRE's gain over its own base),
            or a flat tensor holding the reference step.
        params: the coordinates :math:`D` is measured in (default: the model's trainable
            parameters), in the order of the Hessian operator's vectors.
        eval_mode: take the steps and the gradient in eval mode, the function the Hessian
            operator describes by default.

    Returns:
        A :class:`StepMeasurement`.

    Raises:
        TypeError: if ``optimizer`` or ``reference`` is not an optimizer (or a tensor).
        ValueError: if ``params`` holds a parameter the optimizer does not step, or a given
            reference step has the wrong shape.
    """
    batch = check_batch(batch)
    if not _is_optimizer(optimizer):
        raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
    given_step = isinstance(reference, torch.Tensor)
    if reference is not None and not given_step and not _is_optimizer(reference):
        raise TypeError(
            "reference must be None, an optimizer or a flat step tensor, got "
            f"{type(reference).__name__}"
        )
    params = resolve_parameters(model, params)
    roots = [optimizer]
    if _is_optimizer(reference) and all(reference is not o for o in optimizer_chain(optimizer)):
        if any(optimizer is o for o in optimizer_chain(reference)):
            roots = [reference]
        else:
            roots.append(reference)

    # The outer snapshot also undoes what the forward passes outside the steps change (BatchNorm
    # statistics in train mode); the inner ones put the state back between the two steps.
    with preserved_training_state(model, roots), evaluation_mode(model, eval_mode):
        hessian = HessianOperator(model, loss_fn, batch, params=params, eval_mode=eval_mode)
        gradient = hessian.gradient()
        rates = learning_rates(optimizer, params)
        with preserved_training_state(model, roots):
            step = measure_step(model, loss_fn, batch, optimizer, params)
        if reference is None:
            reference_step = -rates * gradient
            reference_name = GRADIENT_STEP
        elif isinstance(reference, torch.Tensor):
            if reference.shape != gradient.shape:
                raise ValueError(
                    f"reference must be a flat step of shape {tuple(gradient.shape)}, got "
                    f"{tuple(reference.shape)}"
                )
            reference_step = reference.detach().to(dtype=gradient.dtype, device=gradient.device)
            reference_name = GIVEN_STEP
        else:
            with preserved_training_state(model, roots):
                reference_step = measure_step(model, loss_fn, batch, reference, params)
            reference_name = describe_optimizer(reference)

        context = _Context(hessian, gradient, rates, params, reference, reference_step)
        prediction = _predict(optimizer, context)

    uniform_rate = bool((rates == rates[0]).all())
    return StepMeasurement(
        optimizer=describe_optimizer(optimizer),
        reference=reference_name,
        gradient=gradient,
        step=step,
        reference_step=reference_step,
        learning_rates=rates,
        predicted_step=None if prediction is None else prediction.step,
        prediction_formula="" if prediction is None else prediction.formula,
        sam_coefficient=None if prediction is None else prediction.sam_coefficient,
        gain_reference_is_gradient=reference is None and uniform_rate,
    )
