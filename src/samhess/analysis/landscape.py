r"""Slices of the loss landscape around a trained model.

Three slices of :math:`L` through the weights :math:`w`, all on one batch and in eval mode:

* along the top Hessian eigenvector :math:`v_1` (:math:`\lVert v_1\rVert = 1`):
  :math:`\alpha \mapsto L(w + \alpha v_1)`, :math:`\alpha` a distance in parameter space; to
  second order :math:`L + \alpha \langle g, v_1\rangle + \tfrac12 \lambda_1 \alpha^2`;
* along a filter-normalized random direction :math:`d` (Li, Xu, Taylor, Studer & Goldstein,
  "Visualizing the loss landscape of neural nets", NeurIPS 2018):
  :math:`\alpha \mapsto L(w + \alpha d)`;
* over the plane of two such directions: :math:`(\alpha, \beta) \mapsto L(w + \alpha d_1 +
  \beta d_2)`.

Filter normalization makes slices of differently scaled networks comparable: a Gaussian
direction is rescaled filter by filter (each slice along the first axis of a weight tensor: the
row of one output unit of a linear layer, one output channel of a convolution) to the norm of
the same filter of :math:`w`,

.. math::

    d_{i} \leftarrow \frac{d_{i}}{\lVert d_{i}\rVert} \lVert w_{i}\rVert ,

so :math:`\alpha = 1` moves every filter by its own norm. Parameters with fewer than two
dimensions (biases, normalization scales) are left out of the direction (:math:`d = 0`), as in
the paper's experiments. The model itself is never modified: each point is a
:func:`torch.func.functional_call` with the shifted parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from samhess._validation import check_int_at_least, check_positive
from samhess.analysis.results import json_ready
from samhess.curvature.operators import evaluation_mode, resolve_parameters
from samhess.curvature.vectors import unflatten

__all__ = ["LandscapeSlices", "filter_normalized_direction", "loss_landscape"]


@dataclass
class LandscapeSlices:
    r"""Loss slices through a model's weights (:func:`loss_landscape`).

    Attributes:
        radius: the slices span :math:`[-\text{radius}, \text{radius}]` on each axis.
        offsets: the points :math:`\alpha` (and :math:`\beta`) on each axis, ascending.
        loss: :math:`L(w)`.
        top_eigenvalue: :math:`\lambda_1` of the eigenvector sliced along (``None`` when no
            eigenvector or eigenvalue was given).
        along_top_eigenvector: :math:`L(w + \alpha v_1)` per offset (``None`` without one).
        along_random_direction: :math:`L(w + \alpha d_1)` per offset.
        plane: :math:`L(w + \alpha d_1 + \beta d_2)`, one row per :math:`\beta`, one column per
            :math:`\alpha`.
        evaluations: losses evaluated.
    """

    radius: float
    offsets: list[float]
    loss: float
    top_eigenvalue: float | None
    along_top_eigenvector: list[float] | None
    along_random_direction: list[float]
    plane: list[list[float]]
    evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as strict JSON (non-finite losses as ``None``)."""
        return json_ready(dict(self.__dict__))


def filter_normalized_direction(params: Sequence[torch.Tensor],
                                generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction rescaled filter by filter to the norms of ``params``' filters.

    Args:
        params: the weights :math:`w`, one tensor per parameter.
        generator: the source of the Gaussian draws (on the CPU, so that a seed gives the same
            direction on every device).

    Returns:
        One tensor per parameter, shaped, typed and placed like it; zero for parameters with
        fewer than two dimensions, and for a filter whose weights are all zero.
    """
    direction = []
    for weight in params:
        if weight.dim() < 2:
            direction.append(torch.zeros_like(weight))
            continue
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
        draw = draw.to(device=weight.device, dtype=weight.dtype)
        filters = weight.detach().reshape(weight.shape[0], -1)
        drawn = draw.reshape(weight.shape[0], -1)
        scale = filters.norm(dim=1, keepdim=True) / drawn.norm(dim=1, keepdim=True).clamp_min(
            torch.finfo(weight.dtype).tiny)
        direction.append((drawn * scale).reshape(weight.shape))
    return direction


def loss_landscape(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   batch: tuple[torch.Tensor, torch.Tensor], *,
                   params: Sequence[torch.Tensor] | None = None,
                   top_eigenvector: torch.Tensor | None = None,
                   top_eigenvalue: float | None = None, points: int = 21,
                   radius: float = 1.0, seed: int = 0) -> LandscapeSlices:
    r"""The three slices of :math:`L` around ``model``'s weights (see the module docstring).

    Costs :math:`\text{points}^2 + 2\,\text{points} + 1` forward passes over ``batch`` (
    ``points`` fewer without an eigenvector).

    Args:
        model: the network; evaluated in eval mode, and left untouched.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss.
        batch: one ``(inputs, targets)`` batch.
        params: the parameters the slices move (default: every trainable parameter); the
            eigenvector's layout follows their order.
        top_eigenvector: :math:`v_1` as a flat vector over ``params``; normalized here.
        top_eigenvalue: its eigenvalue, recorded beside the slice.
        points: points per axis (at least 3; an odd number puts :math:`w` itself on the grid).
        radius: the half-width of every axis.
        seed: seeds the two random directions.

    Raises:
        TypeError: ``batch`` is not an ``(inputs, targets)`` pair of tensors.
        ValueError: a bad ``points`` or ``radius``, or an eigenvector of the wrong length.
    """
    points = check_int_at_least("points", points, 3)
    radius = check_positive("radius", radius)
    check_int_at_least("seed", seed, 0)
    if (not isinstance(batch, (tuple, list)) or len(batch) != 2
            or not all(isinstance(t, torch.Tensor) for t in batch)):
        raise TypeError("batch must be one (inputs, targets) pair of tensors")
    chosen = resolve_parameters(model, params)
    names = {id(p): name for name, p in model.named_parameters()}
    keys = [names[id(p)] for p in chosen]
    base = [p.detach().clone() for p in chosen]
    size = sum(w.numel() for w in base)
    eigenvector = None
    if top_eigenvector is not None:
        if top_eigenvector.ndim != 1 or top_eigenvector.numel() != size:
            raise ValueError(f"top_eigenvector must be flat with {size} entries, got shape "
                             f"{tuple(top_eigenvector.shape)}")
        vector = top_eigenvector.detach().to(device=base[0].device, dtype=base[0].dtype)
        eigenvector = unflatten(vector / vector.norm(), base)
    generator = torch.Generator().manual_seed(seed)
    first = filter_normalized_direction(base, generator)
    second = filter_normalized_direction(base, generator)
    offsets = torch.linspace(-radius, radius, points, dtype=torch.float64).tolist()
    inputs, targets = batch
    evaluations = 0

    @torch.no_grad()
    def loss_at(*moves: tuple[float, list[torch.Tensor]]) -> float:
        nonlocal evaluations
        shifted = [w.clone() for w in base]
        for scale, direction in moves:
            for tensor, delta in zip(shifted, direction):
                tensor.add_(delta, alpha=scale)
        evaluations += 1
        outputs = functional_call(model, dict(zip(keys, shifted)), (inputs,))
        return float(loss_fn(outputs, targets))

    with evaluation_mode(model, True):
        loss = loss_at()
        eigen_slice = (None if eigenvector is None
                       else [loss_at((alpha, eigenvector)) for alpha in offsets])
        random_slice = [loss_at((alpha, first)) for alpha in offsets]
        plane = [[loss_at((alpha, first), (beta, second)) for alpha in offsets]
                 for beta in offsets]
    return LandscapeSlices(
        radius=radius, offsets=offsets, loss=loss,
        top_eigenvalue=(None if eigenvector is None or top_eigenvalue is None
                        else float(top_eigenvalue)),
        along_top_eigenvector=eigen_slice, along_random_direction=random_slice, plane=plane,
        evaluations=evaluations)
