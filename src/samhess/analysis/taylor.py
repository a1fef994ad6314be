r"""How far SAM's Taylor expansions hold: the gradient and the loss at :math:`w + e`.

SAM (Foret et al., ICLR 2021) steps with the gradient taken at :math:`w + e`,
:math:`e = \rho\, g/\lVert g\rVert` (USAM: :math:`e = \rho g`), holding :math:`e` fixed. Around
:math:`w`, with :math:`g = \nabla L(w)` and :math:`H = \nabla^2 L(w)`,

.. math::

    \nabla L(w + e) = g + H e + O(\lVert e\rVert^2), \qquad
    L(w + e) = L(w) + e^\top g + \tfrac12 e^\top H e + O(\lVert e\rVert^3).

The first line is the seed note's :math:`(I + \rho H/\lVert g\rVert)\, g`; the second is the
*second*-order expansion (the seed calls it third order), whose quadratic term for SAM's
:math:`e` is :math:`\tfrac12\rho^2 g^\top H g/\lVert g\rVert^2`. It equals
:math:`\tfrac12\sigma^2 \operatorname{Tr} H` only in expectation over a random :math:`e` with
:math:`\mathbb{E}\, e e^\top = \sigma^2 I` (Hutchinson, 1989), which
:func:`trace_identity_check` verifies by Monte Carlo.

:func:`taylor_check` measures both remainders relative to the correction they leave out, so that
each must fall like :math:`\rho`:

.. math::

    \text{grad\_rel\_error} = \frac{\lVert \nabla L(w+e) - (g + He)\rVert}
                                   {\lVert \nabla L(w+e) - g\rVert}, \qquad
    \text{loss\_rel\_error} = \frac{|L(w+e) - (L + e^\top g + \tfrac12 e^\top H e)|}
                                   {|L(w+e) - L - e^\top g|}.

The Hessian-vector products come from :class:`samhess.curvature.HessianOperator`; work in
float64, since the numerators are differences of nearly equal numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from samhess._validation import check_int_at_least, check_positive
from samhess.analysis._steps import (
    as_data,
    check_batch,
    describe_optimizer,
    evaluation_mode,
    loss_and_gradient,
    optimizer_parameters,
    perturbed,
    preserved_training_state,
    resolve_parameters,
)
from samhess.analysis.results import TaylorCheck, TraceIdentityCheck
from samhess.curvature import HessianOperator, trace
from samhess.curvature.vectors import flatten, unflatten
from samhess.optim import IRE, SAM
from samhess.optim.sam import StepGroup

__all__ = [
    "taylor_check",
    "trace_identity_check",
    "log_log_slope",
    "optimizer_perturbation",
    "perturbing_optimizer",
    "sam_perturbation",
    "PerturbationFunction",
]

#: A perturbation as a function: the flat gradient :math:`g` at :math:`w` and a radius
#: :math:`\rho` in, the flat perturbation :math:`e` out.
PerturbationFunction = Callable[[torch.Tensor, float], torch.Tensor]


def log_log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of :math:`\\log y` against :math:`\\log x` over the positive pairs.

    Returns NaN when fewer than two pairs have finite, positive ``x`` and ``y``.
    """
    pairs = [
        (x, y)
        for x, y in zip(xs, ys)
        if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0
    ]
    if len({x for x, _ in pairs}) < 2:
        return math.nan
    log_x, log_y = np.log(np.array(pairs)).T
    return float(np.polyfit(log_x, log_y, 1)[0])


def _check_rhos(rhos: object) -> list[float]:
    if isinstance(rhos, (int, float)) or not hasattr(rhos, "__iter__"):
        raise TypeError(f"rhos must be a sequence of radii, got {rhos!r}")
    values = [check_positive(f"rhos[{i}]", r) for i, r in enumerate(rhos)]
    if not values:
        raise ValueError("rhos must hold at least one radius, got none")
    return values


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def sam_perturbation(g: torch.Tensor, rho: float) -> torch.Tensor:
    """SAM's perturbation :math:`e = \\rho\\, g/\\lVert g\\rVert` (Foret et al., ICLR 2021)."""
    return rho * g / g.norm()


def perturbing_optimizer(optimizer: Any) -> Any | None:
    """The optimizer whose ``first_step`` perturbs (``optimizer``, or what an IRE wraps), or
    ``None`` when there is none: no ``first_step``, or a group without ``rho``."""
    while isinstance(optimizer, IRE):
        optimizer = optimizer.optimizer
    groups = getattr(optimizer, "param_groups", None)
    if not callable(getattr(optimizer, "first_step", None)) or not groups or any(
            "rho" not in group for group in groups):
        return None
    return optimizer


def _sharpness_aware(optimizer: Any) -> Any:
    perturbing = perturbing_optimizer(optimizer)
    if perturbing is None:
        raise TypeError(
            "perturbation must be None (SAM's rho g / ||g||), a sharpness-aware optimizer with "
            "first_step() and a 'rho' in every parameter group (SAM, USAM, ASAM, a variant, or "
            f"IRE over one), or a callable (g, rho) -> e; got {type(optimizer).__name__}"
        )
    return perturbing


def optimizer_perturbation(model: nn.Module, optimizer: Any,
                           params: Sequence[torch.Tensor]) -> PerturbationFunction:
    r"""The perturbation a sharpness-aware optimizer takes from :math:`w`, as a function.

    For a gradient :math:`g` and a radius :math:`\rho`, every group's ``rho`` is set to
    :math:`\rho` and the parameters' ``.grad`` to :math:`g`; the optimizer then moves the
    weights to :math:`w + e` and :math:`e` is read off; the weights, gradients, the optimizer's
    state and its groups are then put back bit for bit. A samhess :class:`~samhess.optim.SAM`
    (any variant) moves them through its perturbation hook (``_perturb``), so a variant that
    skips the perturbation on some steps (LookSAM, RST) still shows the one it takes on the
    others, and BSAM shows :math:`\rho\, g/s`; any other optimizer through ``first_step``.
    State the perturbation depends on (an average of past gradients, a learned precision) is
    the optimizer's current one.

    Raises:
        TypeError: ``optimizer`` has no ``first_step`` or no ``rho`` in a group.
        ValueError: it steps a parameter outside ``params``.
    """
    optimizer = _sharpness_aware(optimizer)
    stepped = optimizer_parameters(optimizer)
    positions = {id(p): i for i, p in enumerate(params)}
    outside = [i for i, p in enumerate(stepped) if id(p) not in positions]
    if outside:
        raise ValueError(
            f"the optimizer's parameter {outside[0]} is not among params; pass the parameters "
            "the optimizer steps"
        )

    def perturbation(g: torch.Tensor, rho: float) -> torch.Tensor:
        grads = unflatten(g, params)
        with preserved_training_state(model, [optimizer]), torch.no_grad():
            for p in stepped:
                p.grad = grads[positions[id(p)]].to(dtype=p.dtype).clone()
            for group in optimizer.param_groups:
                group["rho"] = rho
            before = flatten(params)
            if isinstance(optimizer, SAM):
                optimizer._perturb([StepGroup(group, [p for p in group["params"]
                                                      if p.grad is not None])
                                    for group in optimizer.param_groups], 1.0)
            else:
                optimizer.first_step()
            return flatten(params) - before

    return perturbation


def _describe(perturbation: Any) -> str:
    if perturbation is None:
        return "SAM: rho g / ||g||"
    if callable(getattr(perturbation, "first_step", None)) or isinstance(perturbation, IRE):
        return describe_optimizer(perturbation)
    return getattr(perturbation, "__name__", type(perturbation).__name__)


def taylor_check(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    rhos: Sequence[float],
    perturbation: Any = None,
    *,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> TaylorCheck:
    r"""A perturbed gradient and loss at :math:`w + e` against their Taylor predictions, per radius.

    For each :math:`\rho` the perturbation :math:`e(\rho)` is

    * ``perturbation=None``: SAM's :math:`e = \rho\, g/\lVert g\rVert`;
    * a sharpness-aware optimizer (SAM, USAM, ASAM, any variant with ``first_step`` and a
      ``rho`` per group, or IRE over one): the perturbation its next ``first_step`` takes with
      radius :math:`\rho` (:func:`optimizer_perturbation`); e.g. ASAM's
      :math:`\rho\, T^2 g/\lVert T g\rVert`;
    * a callable ``(g, rho) -> e`` on flat tensors.

    The gradient and loss at :math:`w + e` are evaluated on ``batch`` and compared with
    :math:`g + He` and :math:`L + e^\top g + \tfrac12 e^\top H e` (definitions in the module
    docstring); the Hessian-vector products of all radii are one block product. The model's
    weights, and the optimizer, are bit-identical afterwards.

    ``order`` is the slope of :math:`\log` ``grad_rel_error`` against :math:`\log\rho`: 1 where
    the expansion holds (a smooth loss and an :math:`e` proportional to :math:`\rho`), 0 where
    the remainder is as large as the correction. On an exactly quadratic loss every error is 0
    up to rounding and the slope means nothing.

    Args:
        model: the network, at the weights :math:`w` to expand around.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss over the batch.
        batch: ``(inputs, targets)``.
        rhos: positive radii, e.g. ``numpy.logspace(-3, -1, 5)``.
        perturbation: ``None``, a sharpness-aware optimizer over ``params``, or a callable.
        params: the parameters to perturb (default: the model's trainable parameters).
        eval_mode: evaluate in eval mode (as :class:`~samhess.curvature.HessianOperator` does
            by default), so dropout and BatchNorm describe one fixed function.

    Returns:
        A :class:`~samhess.analysis.results.TaylorCheck`.

    Raises:
        TypeError: ``perturbation`` is neither ``None``, a sharpness-aware optimizer nor a
            callable, or the callable returns no tensor of the gradient's shape.
        ValueError: a bad radius, a zero gradient with SAM's perturbation, or a perturbation
            that is zero at every radius.

    Example:
        >>> check = taylor_check(model, torch.nn.CrossEntropyLoss(), (x, y), [1e-3, 1e-2, 1e-1],
        ...                      perturbation=asam)
        >>> check.order  # about 1
    """
    batch = check_batch(batch)
    radii = _check_rhos(rhos)
    params = resolve_parameters(model, params)
    description = _describe(perturbation)
    if perturbation is None:
        perturb = sam_perturbation
    elif callable(getattr(perturbation, "step", None)) and hasattr(perturbation, "param_groups"):
        perturb = optimizer_perturbation(model, perturbation, params)
    elif callable(perturbation):
        perturb = perturbation
    else:
        raise TypeError(
            "perturbation must be None, a sharpness-aware optimizer or a callable (g, rho) -> e, "
            f"got {type(perturbation).__name__}"
        )
    # In train mode the forward passes would move BatchNorm statistics: put everything back.
    with preserved_training_state(model, []), evaluation_mode(model, eval_mode):
        loss, g = loss_and_gradient(model, loss_fn, batch, params)
        grad_norm = float(g.norm())
        if perturbation is None and grad_norm == 0.0:
            raise ValueError("the gradient is zero at w, so SAM's g/||g|| is undefined")
        perturbations = []
        for rho in radii:
            e = perturb(g, rho)
            if not isinstance(e, torch.Tensor) or e.shape != g.shape:
                raise TypeError(
                    f"perturbation({description}) must return a flat tensor of shape "
                    f"{tuple(g.shape)}, got {getattr(e, 'shape', type(e).__name__)}"
                )
            perturbations.append(e.detach().to(g))
        block = torch.stack(perturbations, dim=1)
        if not bool(block.any()):
            raise ValueError(f"the perturbation of {description} is zero at every radius "
                             "(a zero gradient?)")
        hessian = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
        hessian_block = hessian @ block
        g_h_g = float(g @ (hessian @ g))

        columns: dict[str, list[float]] = {key: [] for key in (
            "grad_rel_error", "loss_rel_error", "perturbation_norms", "grad_correction_norms",
            "predicted_correction_norms", "grad_abs_error", "loss_at_perturbation",
            "quadratic_terms")}
        for index, e in enumerate(perturbations):
            hessian_e = hessian_block[:, index]
            with perturbed(params, e):
                loss_e, g_e = loss_and_gradient(model, loss_fn, batch, params)
            correction = g_e - g
            grad_error = float((correction - hessian_e).norm())
            correction_norm = float(correction.norm())
            linear = float(e @ g)
            quadratic = 0.5 * float(e @ hessian_e)
            columns["grad_rel_error"].append(_ratio(grad_error, correction_norm))
            columns["loss_rel_error"].append(
                _ratio(abs(loss_e - (loss + linear + quadratic)), abs(loss_e - loss - linear))
            )
            columns["perturbation_norms"].append(float(e.norm()))
            columns["grad_correction_norms"].append(correction_norm)
            columns["predicted_correction_norms"].append(float(hessian_e.norm()))
            columns["grad_abs_error"].append(grad_error)
            columns["loss_at_perturbation"].append(loss_e)
            columns["quadratic_terms"].append(quadratic)

    return TaylorCheck(
        perturbation=description,
        rhos=radii,
        order=log_log_slope(radii, columns["grad_rel_error"]),
        loss_order=log_log_slope(radii, columns["loss_rel_error"]),
        grad_norm=grad_norm,
        loss=loss,
        rayleigh_quotient=_ratio(g_h_g, grad_norm**2),
        **columns,
    )


def trace_identity_check(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    sigma: float = 1.0,
    num_samples: int = 200,
    trace_matvecs: int = 100,
    trace_method: str = "hutch++",
    seed: int = 0,
    block_size: int = 32,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> TraceIdentityCheck:
    r"""Monte-Carlo check of :math:`\mathbb{E}\, e^\top H e = \sigma^2 \operatorname{Tr} H`.

    Draws ``num_samples`` vectors :math:`e \sim \mathcal{N}(0, \sigma^2 I)`, averages
    :math:`e^\top H e` and compares the mean with :math:`\sigma^2` times the curvature engine's
    trace estimate (:func:`samhess.curvature.trace`, seeded independently), through the z-score
    :math:`(\bar q - \sigma^2 T) / \sqrt{s_{\bar q}^2 + \sigma^4 s_T^2}`. The identity is the
    basis of Hutchinson's estimator (Hutchinson, 1989); it holds for a *random* isotropic
    :math:`e` only. For SAM's :math:`e = \rho g/\lVert g\rVert` the quadratic form is
    :math:`\rho^2` times the Rayleigh quotient :math:`g^\top H g/\lVert g\rVert^2`, reported
    beside :math:`\operatorname{Tr} H/d` (what an isotropic :math:`e` with
    :math:`\mathbb{E}\lVert e\rVert^2 = \rho^2` gives per :math:`\rho^2`).

    Args:
        model, loss_fn, batch: as for :func:`taylor_check`.
        sigma: standard deviation of each coordinate of :math:`e` (> 0).
        num_samples: Gaussian draws (>= 2); each costs one Hessian-vector product.
        trace_matvecs: Hessian-vector products of the engine's trace estimate.
        trace_method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        seed: seeds the Gaussian draws (the trace estimate uses ``seed + 1``).
        block_size: draws multiplied by :math:`H` at once.
        params: the parameters (default: the model's trainable parameters).
        eval_mode: as for :func:`taylor_check`.

    Returns:
        A :class:`~samhess.analysis.results.TraceIdentityCheck`.
    """
    batch = check_batch(batch)
    sigma = check_positive("sigma", sigma)
    num_samples = check_int_at_least("num_samples", num_samples, 2)
    trace_matvecs = check_int_at_least("trace_matvecs", trace_matvecs, 1)
    block_size = check_int_at_least("block_size", block_size, 1)
    params = resolve_parameters(model, params)
    with preserved_training_state(model, []), evaluation_mode(model, eval_mode):
        hessian = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
        g = hessian.gradient()
        generator = torch.Generator(device=g.device).manual_seed(seed)
        forms = []
        for start in range(0, num_samples, block_size):
            count = min(block_size, num_samples - start)
            draws = sigma * torch.randn(
                g.numel(), count, generator=generator, dtype=g.dtype, device=g.device
            )
            forms.append((draws * (hessian @ draws)).sum(dim=0))
        samples = torch.cat(forms).double()
        estimate = trace(hessian, trace_matvecs, method=trace_method, seed=seed + 1)
        grad_norm_sq = float(g @ g)
        rayleigh = float(g @ (hessian @ g)) / grad_norm_sq if grad_norm_sq > 0 else math.nan

    mean = float(samples.mean())
    stderr = float(samples.std(unbiased=True)) / math.sqrt(num_samples)
    trace_value = float(estimate.estimate)
    trace_stderr = float(getattr(estimate, "stderr", 0.0) or 0.0)
    predicted = sigma**2 * trace_value
    spread = math.sqrt(stderr**2 + sigma**4 * trace_stderr**2)
    return TraceIdentityCheck(
        sigma=sigma,
        num_samples=num_samples,
        monte_carlo_mean=mean,
        monte_carlo_stderr=stderr,
        trace_estimate=trace_value,
        trace_stderr=trace_stderr,
        trace_method=trace_method,
        predicted_mean=predicted,
        z_score=(mean - predicted) / spread if spread > 0 else math.nan,
        dim=int(g.numel()),
        rayleigh_quotient=rayleigh,
        mean_eigenvalue=trace_value / g.numel(),
    )
