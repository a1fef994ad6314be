"""Masks selecting the flattest coordinates from a diagonal curvature estimate."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samhess._validation import check_open_unit_interval

__all__ = ["flattest_coordinates_mask"]


def _selection_mask(values: torch.Tensor, count: int) -> torch.Tensor:
    # A stable sort puts equal values in flat-index order, which is the documented tie rule.
    order = torch.argsort(values, stable=True)
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    mask[order[:count]] = True
    return mask


def flattest_coordinates_mask(
    estimates: Sequence[torch.Tensor], gamma: float, per_tensor: bool = False
) -> list[torch.Tensor]:
    r"""Boolean masks that are ``True`` on the ``round(gamma * n)`` smallest estimates.

    With ``per_tensor=False`` the ranking is global: all tensors are flattened (row-major) and
    concatenated in order, :math:`n` is the total number of entries, and exactly
    ``round(gamma * n)`` of them are selected. With ``per_tensor=True`` each tensor :math:`i`
    selects ``round(gamma * n_i)`` of its own entries.

    Ranking is by value (smallest = flattest; a negative Hessian-diagonal entry ranks below every
    positive one). Ties are broken by position: a stable ascending sort by value, then by flat
    index, so among equal values the earlier coordinate is selected. ``round`` is Python's
    (halves go to the even integer).

    Args:
        estimates: diagonal curvature estimates, one tensor per parameter.
        gamma: fraction of coordinates to select, in (0, 1).
        per_tensor: rank within each tensor instead of globally.

    Returns:
        Boolean tensors shaped and placed like ``estimates``.
    """
    gamma = check_open_unit_interval("gamma", gamma)
    estimates = [e.detach() for e in estimates]
    if per_tensor:
        return [
            _selection_mask(e.reshape(-1), round(gamma * e.numel())).view(e.shape)
            for e in estimates
        ]
    device = estimates[0].device
    dtype = estimates[0].dtype
    if any(e.dtype != dtype for e in estimates):
        dtype = torch.float64
    flat = torch.cat([e.reshape(-1).to(device=device, dtype=dtype) for e in estimates])
    selected = _selection_mask(flat, round(gamma * flat.numel()))
    pieces = torch.split(selected, [e.numel() for e in estimates])
    return [piece.view(e.shape).to(e.device) for piece, e in zip(pieces, estimates)]
