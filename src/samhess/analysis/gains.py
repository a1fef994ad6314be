r"""Directional gains: how much farther an optimizer moves than a gradient step, per direction.

For a direction :math:`v` (unit or not) and one step :math:`D` of the optimizer from :math:`w`,
the gain over the reference step :math:`D_\text{ref}` (by default :math:`-\eta g`) is

.. math::

    \text{gain}(v) = \frac{\langle v, D\rangle}{\langle v, D_\text{ref}\rangle}.

The seed note's picture, to first order (see ``docs/theory.md``), for an eigenvector
:math:`Hv = \lambda v` of the batch Hessian:

* SAM: :math:`1 + \rho\lambda/\lVert g\rVert`; USAM: :math:`1 + \rho\lambda`: every direction is
  accelerated, the sharp ones most;
* IRE over SGD: :math:`\langle v, (I + \kappa M) g\rangle / \langle v, g\rangle`: acceleration
  only through the mask's flat coordinates.

:func:`sharp_flat_gains` condenses a step into a gain on the sharp subspace (top-:math:`k`
eigenvectors) and one on a flat subspace, and their ratio: above 1 when sharp directions are
accelerated more (the seed's SAM), below 1 when flat ones are (the seed's IRE). A subspace that
holds almost none of the reference step (below ``min_share`` of its squared norm, 1e-4 by
default) gets a NaN gain and a reason, never a number: there the gain divides by a vanishing
:math:`\langle v, g\rangle` and measures the neglected higher-order terms (``docs/theory.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from samhess._validation import check_choice, check_half_open_unit_interval, check_int_at_least
from samhess.analysis._steps import as_data, check_batch, evaluation_mode, resolve_parameters
from samhess.analysis.results import DirectionalGains, SharpFlatGains
from samhess.analysis.step_model import StepMeasurement, measure_steps
from samhess.curvature import HessianOperator, dense_hessian, eigenpairs

__all__ = [
    "directional_gains",
    "sharp_flat_gains",
    "smallest_magnitude_eigenpairs",
    "subspace_gain",
]

FLAT_KINDS = ("complement", "smallest")


def as_directions(
    directions: Any, dim: int, like: torch.Tensor, name: str = "directions"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``directions`` as a ``(dim, k)`` tensor, with eigenvalues when it is an eigenpair result."""
    eigenvalues = None
    if hasattr(directions, "eigenvectors"):
        eigenvalues = getattr(directions, "eigenvalues", None)
        directions = directions.eigenvectors
    if not isinstance(directions, torch.Tensor):
        raise TypeError(
            f"{name} must be a (dim, k) tensor or an eigenpair result, got "
            f"{type(directions).__name__}"
        )
    if directions.ndim == 1:
        directions = directions[:, None]
    if directions.ndim != 2 or directions.shape[0] != dim or directions.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape ({dim}, k) with k >= 1, got {tuple(directions.shape)}"
        )
    directions = directions.detach().to(dtype=like.dtype, device=like.device)
    if eigenvalues is not None:
        eigenvalues = torch.as_tensor(eigenvalues).detach().to(dtype=like.dtype, device=like.device)
    return directions, eigenvalues


#: A subspace whose projected reference step is below this fraction of the whole reference
#: step gets a NaN gain: the ratio would be one of rounding errors (on a network, the exact
#: null space of a batch Hessian is orthogonal to the batch gradient).
NEGLIGIBLE_SHARE = 1e-8

#: :func:`sharp_flat_gains`' default ``min_share``: a subspace holding less of
#: :math:`\lVert D_\text{ref}\rVert^2` gets a NaN gain. On the digits MLPs of
#: ``benchmarks/seed_validity.py`` the full-batch top-5 eigenspace holds about 1e-9 of
#: :math:`\lVert g\rVert^2` after gradient descent (tanh), where the measured sharp/flat ratio
#: falls below 1; 1e-3 to 1e-2 after full-batch Adam, 0.6 to 0.9 after mini-batch SGD.
MIN_SUBSPACE_SHARE = 1e-4


def _projected_gain(
    projected_step: torch.Tensor, projected_reference: torch.Tensor, reference_step: torch.Tensor
) -> float:
    denominator = float(projected_reference @ projected_reference)
    if denominator <= (NEGLIGIBLE_SHARE**2) * float(reference_step @ reference_step):
        return math.nan
    return float(projected_step @ projected_reference) / denominator


def subspace_gain(basis: torch.Tensor, step: torch.Tensor, reference_step: torch.Tensor) -> float:
    r"""The least-squares gain of ``step`` over ``reference_step`` on the span of ``basis``.

    :math:`\langle P D, P D_\text{ref}\rangle / \lVert P D_\text{ref}\rVert^2` with :math:`P`
    the orthogonal projector onto the column span of ``basis`` (orthonormalized here by a QR
    decomposition). For orthonormal eigenvectors :math:`v_i` it is the per-direction gains'
    mean weighted by :math:`\langle v_i, D_\text{ref}\rangle^2`. NaN when
    :math:`\lVert P D_\text{ref}\rVert \le 10^{-8} \lVert D_\text{ref}\rVert`.
    """
    q = torch.linalg.qr(basis).Q
    return _projected_gain(q.T @ step, q.T @ reference_step, reference_step)


def complement_gain(basis: torch.Tensor, step: torch.Tensor, reference_step: torch.Tensor) -> float:
    """:func:`subspace_gain` on the orthogonal complement of the span of ``basis``."""
    q = torch.linalg.qr(basis).Q
    return _projected_gain(
        step - q @ (q.T @ step), reference_step - q @ (q.T @ reference_step), reference_step
    )


def subspace_share(basis: torch.Tensor, vector: torch.Tensor) -> float:
    """The share of ``vector``'s squared norm that lies in the span of ``basis``."""
    q = torch.linalg.qr(basis).Q
    total = float(vector @ vector)
    return float((q.T @ vector).square().sum()) / total if total > 0 else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def _gain_predictions(
    measurement: StepMeasurement,
    directions: torch.Tensor,
    eigenvalues: torch.Tensor | None,
    reference_components: torch.Tensor,
) -> tuple[list[float] | None, str, bool]:
    """The predicted gains, their formula (for display), and whether they are a line in lambda."""
    prediction = measurement.prediction
    if prediction is None:
        return None, "", False
    if (
        eigenvalues is not None
        and prediction.gain_is_linear_in_eigenvalue
        and measurement.gain_reference_is_gradient
    ):
        line = prediction.intercept + prediction.coefficient * eigenvalues
        return line.tolist(), prediction.gain_formula, True
    predicted = (directions.T @ prediction.step) / reference_components
    return predicted.tolist(), f"<v, {prediction.formula}> / <v, D_ref>", False


def directional_gains(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: Any,
    directions: Any,
    reference: Any = None,
    eigenvalues: Sequence[float] | torch.Tensor | None = None,
    *,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> DirectionalGains:
    r"""The gain of one real ``optimizer`` step over a reference step along each direction.

    Takes one step of ``optimizer`` on ``batch`` (through ``step(closure)``, so SAM's two
    passes and IRE's amplification happen as in training), measures
    :math:`D = w_\text{after} - w_\text{before}`, and puts the model and the optimizer back bit
    for bit (see :func:`~samhess.analysis.step_model.measure_steps`). For each column
    :math:`v_i` of ``directions``: :math:`\text{gain}_i = \langle v_i, D\rangle /
    \langle v_i, D_\text{ref}\rangle`.

    Predictions, where the theory gives them:

    * eigenvectors with ``eigenvalues`` given, reference the gradient step: SAM
      :math:`1 + \rho\lambda_i/\lVert g\rVert`, USAM :math:`1 + \rho\lambda_i`, SGD 1;
    * otherwise :math:`\langle v_i, \hat D\rangle / \langle v_i, D_\text{ref}\rangle` with the
      predicted step :math:`\hat D`: :math:`-\eta (g + cHg)` for SAM/USAM/SGD (:math:`c` as
      above) and :math:`(I + \kappa M)\hat D_\text{base}` for IRE, where
      :math:`\hat D_\text{base}` is the reference step itself when ``reference`` is IRE's inner
      optimizer (exact), else the base's own prediction.

    Optimizers whose step has no first-order closed form here (momentum, weight decay, Adam,
    ASAM) get ``predictions=None``.

    Args:
        model: the network at weights :math:`w`.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean batch loss.
        batch: ``(inputs, targets)``.
        optimizer: any torch optimizer, :class:`~samhess.optim.SAM`, or
            :class:`~samhess.optim.IRE` over either.
        directions: a ``(dim, k)`` tensor (or ``(dim,)``), or an eigenpair result from
            :func:`samhess.curvature.eigenpairs` (its eigenvalues are then used).
        reference: ``None`` (gradient step :math:`-\eta g`), an optimizer, or a flat step.
        eigenvalues: eigenvalues of ``directions``, if they are Hessian eigenvectors.
        params: the coordinates of ``directions`` (default: the model's trainable parameters).
        eval_mode: measure in eval mode (the Hessian operator's default).

    Returns:
        A :class:`~samhess.analysis.results.DirectionalGains`.

    Example:
        >>> top = eigenpairs(HessianOperator(model, loss_fn, batch), 5)
        >>> result = directional_gains(model, loss_fn, batch, sam, top)
        >>> result.gains, result.predictions
    """
    params = resolve_parameters(model, params)
    dim = sum(p.numel() for p in params)
    vectors, given_eigenvalues = as_directions(directions, dim, params[0])
    if eigenvalues is not None:
        given_eigenvalues = torch.as_tensor(eigenvalues).detach().to(
            dtype=vectors.dtype, device=vectors.device
        ).reshape(-1)
    if given_eigenvalues is not None and given_eigenvalues.numel() != vectors.shape[1]:
        raise ValueError(
            f"eigenvalues must hold one value per direction ({vectors.shape[1]}), got "
            f"{given_eigenvalues.numel()}"
        )
    measurement = measure_steps(
        model, loss_fn, batch, optimizer, reference, params=params, eval_mode=eval_mode
    )
    components = vectors.T @ measurement.step
    reference_components = vectors.T @ measurement.reference_step
    predictions, formula, linear = _gain_predictions(
        measurement, vectors, given_eigenvalues, reference_components
    )
    return DirectionalGains(
        optimizer=measurement.optimizer,
        reference=measurement.reference,
        gains=(components / reference_components).tolist(),
        components=components.tolist(),
        reference_components=reference_components.tolist(),
        predictions=predictions,
        prediction_formula=formula,
        predictions_linear_in_eigenvalue=linear,
        eigenvalues=None if given_eigenvalues is None else given_eigenvalues.tolist(),
        lr=measurement.lr,
        grad_norm=float(measurement.gradient.norm()),
        step_norm=float(measurement.step.norm()),
        reference_step_norm=float(measurement.reference_step.norm()),
    )


def smallest_magnitude_eigenpairs(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    k: int,
    params: Sequence[torch.Tensor] | None = None,
    *,
    max_dim: int = 4096,
    eval_mode: bool = True,
    skip_null: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``k`` eigenpairs of smallest :math:`|\lambda|` from the dense Hessian.

    Krylov methods converge to the ends of the spectrum, not to its middle, and shift-invert
    at 0 fails on the singular Hessians of networks, so this forms the Hessian
    (:func:`samhess.curvature.dense_hessian`) and diagonalizes it; hence ``max_dim``.

    With ``skip_null`` the numerical null space is left out: eigenvalues with
    :math:`|\lambda| \le d\,\varepsilon \max|\lambda|` (the rank tolerance of
    ``numpy.linalg.matrix_rank``). On a network's batch Hessian that space is exactly zero
    (unused, blank-input and dead-unit coordinates among it) and holds no gradient; the next
    eigenvalues are orders of magnitude above the tolerance (on the digits MLP of the tests,
    :math:`10^{-16}` against :math:`10^{-10}` of :math:`\lambda_\max`).

    Returns:
        ``(eigenvalues, eigenvectors)``, ``(k,)`` and ``(dim, k)``, by increasing
        :math:`|\lambda|`.

    Raises:
        ValueError: beyond ``max_dim`` parameters, or when fewer than ``k`` eigenvalues remain.
    """
    params = resolve_parameters(model, params)
    k = check_int_at_least("k", k, 1)
    dim = sum(p.numel() for p in params)
    if dim > max_dim:
        raise ValueError(
            f"the smallest-|lambda| eigenpairs need the dense Hessian, limited to max_dim="
            f"{max_dim} parameters, got {dim}"
        )
    matrix = dense_hessian(model, loss_fn, as_data(batch), params, eval_mode=eval_mode)
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    order = torch.argsort(values.abs())
    if skip_null:
        tolerance = dim * torch.finfo(values.dtype).eps * float(values.abs().max())
        order = order[values[order].abs() > tolerance]
    if order.numel() < k:
        raise ValueError(
            f"k={k} asks for more eigenpairs than the {order.numel()} "
            f"{'outside the null space' if skip_null else 'there are'}"
        )
    order = order[:k]
    return values[order], vectors[:, order]


def sharp_flat_gains(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: Any,
    k: int = 5,
    reference: Any = None,
    *,
    flat: str = "complement",
    sharp: Any = None,
    flat_directions: torch.Tensor | None = None,
    params: Sequence[torch.Tensor] | None = None,
    seed: int = 0,
    eval_mode: bool = True,
    max_dense_dim: int = 4096,
    min_share: float = MIN_SUBSPACE_SHARE,
) -> SharpFlatGains:
    r"""The optimizer's gain on the sharp subspace, on a flat subspace, and their ratio.

    The sharp subspace is spanned by the top-``k`` Hessian eigenvectors of ``batch``
    (:func:`samhess.curvature.eigenpairs`, ``which="largest"``, or ``sharp`` if given). The flat
    subspace is

    * ``flat="complement"``: the orthogonal complement of the sharp subspace: everything the
      top-:math:`k` eigenvectors do not span (no extra Hessian products);
    * ``flat="smallest"``: the span of the ``k`` eigenvectors of smallest :math:`|\lambda|`,
      from the dense Hessian (at most ``max_dense_dim`` parameters);
    * or the span of ``flat_directions`` if given.

    Each subspace gain is :func:`subspace_gain`: the least-squares factor between the projected
    step and the projected reference step; it is NaN where the reference step has (almost) no
    component, :math:`\lVert P D_\text{ref}\rVert \le 10^{-8}\lVert D_\text{ref}\rVert`. On a
    network the eigenvectors of (numerically) zero eigenvalue of a batch Hessian are such a
    subspace: the batch gradient has no component there. ``flat="smallest"`` then needs ``k``
    beyond the null space's dimension, or explicit ``flat_directions``; ``"complement"`` is
    never empty of gradient. One real step is taken and undone, as in
    :func:`directional_gains`; the predicted gains use the same predicted step.

    A measured subspace gain is also NaN, and the ratio with it, when the subspace holds less
    than ``min_share`` of :math:`\lVert D_\text{ref}\rVert^2` (of :math:`\lVert g\rVert^2` for
    the gradient-step reference); ``undefined_reason`` then says which and how much. Along an
    eigenvector the gradient barely touches, the measured gain is
    :math:`1 + \rho\lambda/\lVert g\rVert + \tfrac12\rho^2\langle v, \nabla^3 L[\hat g, \hat g]\rangle
    / \langle v, g\rangle + O(\rho^3)`: the second-order term divided by a vanishing
    :math:`\langle v, g\rangle` decides it, with either sign, and the ratio no longer tests the
    first-order picture. The predictions, which come from the step model and not from a
    difference of steps, are kept. ``sharp_share`` and ``flat_share`` are reported in every
    case, so that a ratio can be read beside its share.

    Args:
        model, loss_fn, batch, optimizer, reference: as for :func:`directional_gains`.
        k: number of sharp eigenvectors (>= 1).
        flat: ``"complement"`` or ``"smallest"``.
        sharp: precomputed eigenpairs of the batch Hessian (largest first); its first ``k``
            are used.
        flat_directions: a ``(dim, m)`` basis of the flat subspace, overriding ``flat``.
        params: the parameters (default: the model's trainable parameters).
        seed: seeds the Lanczos start vector.
        eval_mode: measure in eval mode.
        max_dense_dim: the largest model ``flat="smallest"`` diagonalizes densely.
        min_share: the smallest share of :math:`\lVert D_\text{ref}\rVert^2` a subspace must
            hold for its measured gain to be reported, in [0, 1) (default
            :data:`MIN_SUBSPACE_SHARE`, 1e-4; 0 reports every gain above rounding).

    Returns:
        A :class:`~samhess.analysis.results.SharpFlatGains`.
    """
    batch = check_batch(batch)
    k = check_int_at_least("k", k, 1)
    flat = check_choice("flat", flat, FLAT_KINDS)
    min_share = check_half_open_unit_interval("min_share", min_share)
    params = resolve_parameters(model, params)
    dim = sum(p.numel() for p in params)
    if sharp is None:
        with evaluation_mode(model, eval_mode):
            operator = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
            sharp = eigenpairs(operator, min(k, dim - 1), which="largest", seed=seed)
    vectors, eigenvalues = as_directions(sharp, dim, params[0], name="sharp")
    if eigenvalues is None:
        raise TypeError("sharp must be an eigenpair result with eigenvalues and eigenvectors")
    vectors, eigenvalues = vectors[:, :k], eigenvalues[:k]

    flat_eigenvalues = None
    if flat_directions is not None:
        flat_basis, _ = as_directions(flat_directions, dim, params[0], name="flat_directions")
        flat_kind = "given"
    elif flat == "smallest":
        with evaluation_mode(model, eval_mode):
            flat_eigenvalues, flat_basis = smallest_magnitude_eigenpairs(
                model, loss_fn, batch, k, params, max_dim=max_dense_dim, eval_mode=eval_mode
            )
        flat_basis = flat_basis.to(dtype=vectors.dtype)
        flat_kind = "smallest"
    else:
        flat_basis, flat_kind = None, "complement"

    measurement = measure_steps(
        model, loss_fn, batch, optimizer, reference, params=params, eval_mode=eval_mode
    )

    def gains_of(step: torch.Tensor) -> tuple[float, float]:
        sharp_gain = subspace_gain(vectors, step, measurement.reference_step)
        if flat_basis is None:
            flat_gain = complement_gain(vectors, step, measurement.reference_step)
        else:
            flat_gain = subspace_gain(flat_basis, step, measurement.reference_step)
        return sharp_gain, flat_gain

    sharp_gain, flat_gain = gains_of(measurement.step)
    predicted_sharp = predicted_flat = predicted_ratio = None
    if measurement.predicted_step is not None:
        predicted_sharp, predicted_flat = gains_of(measurement.predicted_step)
        predicted_ratio = _ratio(predicted_sharp, predicted_flat)
    per_direction = (vectors.T @ measurement.step) / (vectors.T @ measurement.reference_step)
    sharp_share = subspace_share(vectors, measurement.reference_step)
    if flat_basis is None:
        flat_share = 1.0 - sharp_share
    else:
        flat_share = subspace_share(flat_basis, measurement.reference_step)
    reasons = []
    for name, share in (("sharp", sharp_share), ("flat", flat_share)):
        if share < min_share:
            reasons.append(
                f"the {name} subspace holds {share:.2e} of ||D_ref||^2, below min_share="
                f"{min_share:g}: its gain divides by vanishing components"
            )
    if sharp_share < min_share:
        sharp_gain = math.nan
    if flat_share < min_share:
        flat_gain = math.nan
    return SharpFlatGains(
        optimizer=measurement.optimizer,
        reference=measurement.reference,
        k=int(vectors.shape[1]),
        flat=flat_kind,
        sharp_gain=sharp_gain,
        flat_gain=flat_gain,
        ratio=_ratio(sharp_gain, flat_gain),
        sharp_gains=per_direction.tolist(),
        sharp_gain_median=float(torch.quantile(per_direction, 0.5)),
        eigenvalues=eigenvalues.tolist(),
        flat_eigenvalues=None if flat_eigenvalues is None else flat_eigenvalues.tolist(),
        predicted_sharp_gain=predicted_sharp,
        predicted_flat_gain=predicted_flat,
        predicted_ratio=predicted_ratio,
        prediction_formula=measurement.prediction_formula,
        sharp_share=sharp_share,
        flat_share=flat_share,
        min_share=min_share,
        undefined_reason="; ".join(reasons),
        grad_norm=float(measurement.gradient.norm()),
        lr=measurement.lr,
    )
