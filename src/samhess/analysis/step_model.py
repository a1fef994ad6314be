r"""One optimizer step measured, with the reference step and the theory's prediction of it.

:func:`measure_steps` takes the real step with the real optimizer, the reference step (by
default the plain gradient step :math:`-\eta g` with the optimizer's learning rates) and the
predicted step where the theory gives one (:mod:`samhess.analysis.predictions`, looked up by the
optimizer's exact type), and leaves the model and the optimizers exactly as it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samhess.analysis._steps import (
    as_data,
    check_batch,
    describe_optimizer,
    evaluation_mode,
    learning_rates,
    measure_step,
    optimizer_chain,
    preserved_training_state,
    resolve_parameters,
)
from samhess.analysis.predictions import FirstOrderPrediction, PredictionContext, predict_step
from samhess.curvature import HessianOperator

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
        prediction: the theory's step (``None`` where no rule is registered for the
            optimizer's type, or the rule gives none from this state).
        gain_reference_is_gradient: whether ``reference_step`` is :math:`-\eta g` with one
            learning rate for every coordinate, the case where an eigenvector's predicted gain
            of a :attr:`~samhess.analysis.predictions.StepForm.SHARPNESS_AWARE` step is
            :math:`1 + c\lambda`.
    """

    optimizer: str
    reference: str
    gradient: torch.Tensor
    step: torch.Tensor
    reference_step: torch.Tensor
    learning_rates: torch.Tensor
    prediction: FirstOrderPrediction | None
    gain_reference_is_gradient: bool

    @property
    def lr(self) -> float:
        """The learning rate of the first coordinate's group."""
        return float(self.learning_rates[0])

    @property
    def predicted_step(self) -> torch.Tensor | None:
        """The predicted step :math:`\\hat D` (``None`` without a prediction)."""
        return None if self.prediction is None else self.prediction.step

    @property
    def prediction_formula(self) -> str:
        """The predicted step's formula, for display (empty without a prediction)."""
        return "" if self.prediction is None else self.prediction.formula


def _is_optimizer(value: object) -> bool:
    return callable(getattr(value, "step", None)) and hasattr(value, "param_groups")


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
        loss_fn: ``loss_fn(outputs, targets)`` -> mean batch loss.
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
        hessian = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
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

        context = PredictionContext(hessian, gradient, rates, params, reference, reference_step,
                                    model=model, loss_fn=loss_fn, batch=batch,
                                    eval_mode=eval_mode)
        prediction = predict_step(optimizer, context)

    uniform_rate = bool((rates == rates[0]).all())
    return StepMeasurement(
        optimizer=describe_optimizer(optimizer),
        reference=reference_name,
        gradient=gradient,
        step=step,
        reference_step=reference_step,
        learning_rates=rates,
        prediction=prediction,
        gain_reference_is_gradient=reference is None and uniform_rate,
    )
