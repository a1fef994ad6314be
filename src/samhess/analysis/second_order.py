r"""SAM's gain to second order: the term that decides it where the gradient barely reaches.

With :math:`e = c\,g` held fixed (:math:`c = \rho/\lVert g\rVert` for SAM, :math:`\rho` for
USAM), the gradient at :math:`w + e` is

.. math::

    \nabla L(w + e) = g + c\,Hg + \tfrac12 c^2\, \nabla^3 L[g, g] + O(c^3),

so SAM's gain along a direction :math:`v` (one SAM step over SGD against the gradient step) is

.. math::

    \text{gain}(v) = 1 + c\,\frac{\langle v, Hg\rangle}{\langle v, g\rangle}
        + \frac{c^2}{2}\,\frac{\langle v, \nabla^3 L[g, g]\rangle}{\langle v, g\rangle}
        + O(c^3),

which for an eigenvector :math:`Hv = \lambda v` and SAM reads
:math:`1 + \rho\lambda/\lVert g\rVert + \tfrac12\rho^2\langle v, \nabla^3 L[\hat g, \hat g]\rangle
/ \langle v, g\rangle`. The first-order term never changes the sign of the step along
:math:`v` for :math:`\lambda \ge 0`: on a quadratic, the component of :math:`\nabla L(w + e)`
along :math:`v` is :math:`\langle v, g\rangle (1 + \rho\lambda/\lVert g\rVert)`. The second-order
term is divided by :math:`\langle v, g\rangle`, not by :math:`\lVert g\rVert`: where the gradient
is nearly orthogonal to :math:`v` it dominates, with either sign, and gives the negative gains
measured on networks trained by full-batch gradient descent (``docs/theory.md``).
:math:`\nabla^3 L[u, u] = \nabla_w\, (u^\top \nabla^2 L(w)\, u)` with :math:`u` held fixed, one
third-order backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from samhess._validation import check_choice, check_positive
from samhess.analysis._steps import (
    check_batch,
    evaluation_mode,
    preserved_training_state,
    resolve_parameters,
)
from samhess.analysis.gains import as_directions
from samhess.analysis.layer_norm_formula import layer_norm_as_formula
from samhess.analysis.results import SecondOrderGains
from samhess.analysis.step_model import measure_steps
from samhess.curvature.attention import math_attention
from samhess.curvature.batches import call_model
from samhess.curvature.vectors import flatten, unflatten
from samhess.optim import SAM

__all__ = ["third_derivative", "second_order_gains"]


def _gradient_or_zeros(
    output: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool
) -> list[torch.Tensor]:
    # A derivative that is identically zero (a loss linear or quadratic in the parameters)
    # leaves no graph to differentiate further.
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in params]
    return list(
        torch.autograd.grad(
            output, list(params), create_graph=create_graph, allow_unused=True,
            materialize_grads=True,
        )
    )


def third_derivative(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    direction: torch.Tensor,
    *,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> torch.Tensor:
    r""":math:`\nabla^3 L(w)[u, u]`, the flat vector with entries
    :math:`\sum_{jk} \partial_i\partial_j\partial_k L\, u_j u_k`.

    Computed as the gradient of :math:`u^\top \nabla^2 L(w)\, u` with :math:`u` held fixed:
    a Hessian-vector product kept in the graph and differentiated once more, with attention on
    the math kernel (the fused ones have a first derivative only) and layer normalization as
    its formula (:mod:`samhess.analysis.layer_norm_formula`). The model's weights, buffers and
    ``.grad`` fields are untouched.

    Args:
        model: the network at weights :math:`w`.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean batch loss.
        batch: ``(inputs, targets)``, any batch of :mod:`samhess.curvature.batches`.
        direction: the flat vector :math:`u`, in the order of ``params``.
        params: the parameters (default: the model's trainable parameters).
        eval_mode: evaluate in eval mode.

    Raises:
        ValueError: if ``direction`` does not hold one entry per parameter coordinate.
    """
    inputs, targets = check_batch(batch)
    params = resolve_parameters(model, params)
    dim = sum(p.numel() for p in params)
    if not isinstance(direction, torch.Tensor) or direction.numel() != dim:
        raise ValueError(
            f"direction must be a flat tensor of {dim} entries, got "
            f"{tuple(direction.shape) if isinstance(direction, torch.Tensor) else direction!r}"
        )
    pieces = unflatten(direction.detach().reshape(-1).to(params[0].dtype), params)
    with preserved_training_state(model, []), evaluation_mode(model, eval_mode):
        # fused kernels without a correct higher derivative: attention's (none beyond the
        # first), layer_norm's (a wrong second one)
        with torch.enable_grad(), math_attention(), layer_norm_as_formula():
            loss = loss_fn(call_model(model, inputs), targets)
            gradient = _gradient_or_zeros(loss, params, create_graph=True)
            slope = sum((g * u).sum() for g, u in zip(gradient, pieces))
            hessian_u = _gradient_or_zeros(slope, params, create_graph=True)
            curvature = sum((h * u).sum() for h, u in zip(hessian_u, pieces))
            third = _gradient_or_zeros(curvature, params, create_graph=False)
    return flatten([t.detach() for t in third])


def second_order_gains(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    rho: float,
    directions: Any,
    *,
    mode: str = "sam",
    lr: float = 0.1,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> SecondOrderGains:
    r"""SAM's measured gain along each direction beside its first- and second-order predictions.

    Takes one real SAM (``mode="sam"``) or USAM step over plain SGD with radius ``rho`` and
    learning rate ``lr`` (gains do not depend on it) on ``batch``, and undoes it
    (:func:`~samhess.analysis.step_model.measure_steps`). For each column :math:`v` of
    ``directions``, with :math:`c = \rho/\lVert g\rVert` (SAM) or :math:`\rho` (USAM):

    * ``measured``: :math:`\langle v, D\rangle / \langle v, -\eta g\rangle`;
    * ``first_order``: :math:`1 + c\,\langle v, Hg\rangle/\langle v, g\rangle`
      (:math:`1 + c\lambda` for an eigenvector);
    * ``second_order``: ``first_order`` plus
      :math:`\tfrac12 c^2 \langle v, \nabla^3 L[g, g]\rangle / \langle v, g\rangle`
      (:func:`third_derivative`).

    The second-order gain's error is :math:`O(\rho^3)`, the first-order one's :math:`O(\rho^2)`
    (both divided by :math:`\langle v, g\rangle`); on a loss with zero fourth derivative (a
    cubic) the second-order gain is exact.

    Args:
        model, loss_fn, batch: as for :func:`third_derivative`.
        rho: the radius (> 0).
        directions: a ``(dim, k)`` tensor or an eigenpair result (its eigenvalues are
            reported).
        mode: ``"sam"`` or ``"usam"``.
        lr: the SGD learning rate (> 0).
        params: the parameters (default: the model's trainable parameters).
        eval_mode: measure in eval mode.

    Returns:
        A :class:`~samhess.analysis.results.SecondOrderGains`.

    Raises:
        ValueError: for a bad ``rho``, ``lr`` or ``mode``, directions of the wrong shape, or a
            zero gradient with ``mode="sam"``.
    """
    batch = check_batch(batch)
    rho = check_positive("rho", rho)
    lr = check_positive("lr", lr)
    mode = check_choice("mode", mode, ("sam", "usam"))
    params = resolve_parameters(model, params)
    dim = sum(p.numel() for p in params)
    vectors, eigenvalues = as_directions(directions, dim, params[0])
    sam = SAM(params, torch.optim.SGD, rho=rho, normalize=(mode == "sam"), lr=lr)
    measurement = measure_steps(model, loss_fn, batch, sam, params=params, eval_mode=eval_mode)
    gradient = measurement.gradient
    grad_norm = float(gradient.norm())
    if mode == "sam" and grad_norm == 0.0:
        raise ValueError("the gradient is zero at w, so SAM's g/||g|| is undefined")
    coefficient = rho / grad_norm if mode == "sam" else rho
    with evaluation_mode(model, eval_mode):
        third = third_derivative(model, loss_fn, batch, gradient, params=params,
                                 eval_mode=eval_mode)
    components = vectors.T @ gradient
    measured = (vectors.T @ measurement.step) / (vectors.T @ measurement.reference_step)
    first = (vectors.T @ measurement.predicted_step) / (vectors.T @ measurement.reference_step)
    term = 0.5 * coefficient**2 * (vectors.T @ third) / components
    norms = torch.linalg.vector_norm(vectors, dim=0)
    return SecondOrderGains(
        mode=mode,
        rho=rho,
        grad_norm=grad_norm,
        eigenvalues=None if eigenvalues is None else eigenvalues.tolist(),
        gradient_cosines=(components / (norms * grad_norm)).tolist(),
        measured=measured.tolist(),
        first_order=first.tolist(),
        second_order_terms=term.tolist(),
        second_order=(first + term).tolist(),
    )
