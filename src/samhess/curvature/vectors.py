"""Flat parameter vectors: the coordinates every curvature operator works in.

An operator over parameters ``[p_1, ..., p_m]`` acts on vectors of length ``sum_i p_i.numel()``,
laid out as ``torch.nn.utils.parameters_to_vector`` lays them out (parameter order, each
tensor flattened row-major).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require a gradient, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one flat vector (a copy, detached from autograd).

    Tensors may be non-contiguous (gradients of convolutions often are).
    """
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat ``vector`` into tensors shaped like ``like`` (views of ``vector``)."""
    sizes = [t.numel() for t in like]
    if vector.ndim != 1 or vector.numel() != sum(sizes):
        raise ValueError(
            f"vector must be flat with {sum(sizes)} entries, got shape {tuple(vector.shape)}"
        )
    return [chunk.view_as(t) for chunk, t in zip(torch.split(vector, sizes), like)]
