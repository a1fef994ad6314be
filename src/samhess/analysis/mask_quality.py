r"""Does IRE's coordinate mask separate the Hessian's sharp and flat eigenspaces?

IRE (Wang et al., NeurIPS 2024) amplifies the step on the coordinates whose diagonal curvature
estimate is smallest: :math:`D \leftarrow (I + \kappa M) D` with :math:`M = \operatorname{diag}(m)`,
:math:`m \in \{0, 1\}^d`. The seed note reads :math:`M` as the projection onto the flat
directions, but it projects onto *coordinates*: a sharp eigenvector :math:`v` is amplified by
:math:`\kappa \lVert M v\rVert^2` along itself whenever it has mass on coordinates the mask
calls flat. :func:`ire_mask_quality` measures that mass for each sharp eigenvector (ideal 0), the
mass the mask holds of given flat eigenvectors (ideal 1), and the share of the mask spent on
inert coordinates, whose gradient and curvature are exactly zero (a ReLU unit dead on the
batch, a pixel blank in every example): amplifying them moves nothing. A random mask selecting
a fraction :math:`\gamma` of the coordinates gives :math:`\gamma` for the first two and the
inert coordinates' overall fraction for the third, in expectation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from samhess.analysis._steps import optimizer_parameters
from samhess.analysis.gains import as_directions
from samhess.analysis.results import MaskQuality
from samhess.curvature.vectors import flatten

__all__ = ["ire_mask_quality", "flat_mask_vector"]


def flat_mask_vector(
    ire_or_mask: Any, params: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """IRE's mask (or a given mask) as one flat 0/1 vector.

    Args:
        ire_or_mask: an :class:`~samhess.optim.IRE` with a mask, a list of mask tensors (one
            per parameter), or a flat tensor.
        params: for an IRE, the parameters (in order) the vector is laid out in; default: IRE's
            own parameter order, which is ``model.parameters()`` order for an optimizer built
            from it.

    Raises:
        ValueError: if the IRE has no mask yet or ``params`` holds a parameter IRE does not own.
        TypeError: for anything else.
    """
    if hasattr(ire_or_mask, "mask") and hasattr(ire_or_mask, "param_groups"):
        masks = ire_or_mask.mask
        if masks is None:
            raise ValueError("the IRE has no mask yet: call update_mask(diag) first")
        if params is None:
            return flatten(masks)
        mask_of = {id(p): m for p, m in zip(optimizer_parameters(ire_or_mask), masks)}
        missing = [i for i, p in enumerate(params) if id(p) not in mask_of]
        if missing:
            raise ValueError(f"params[{missing[0]}] is not among the IRE's parameters")
        return flatten([mask_of[id(p)] for p in params])
    if isinstance(ire_or_mask, torch.Tensor):
        return ire_or_mask.detach().reshape(-1)
    if isinstance(ire_or_mask, (list, tuple)) and all(
        isinstance(m, torch.Tensor) for m in ire_or_mask
    ):
        return flatten(ire_or_mask)
    raise TypeError(
        "ire_or_mask must be an IRE, a list of mask tensors or a flat tensor, got "
        f"{type(ire_or_mask).__name__}"
    )


def _mass_on_mask(mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    return (mask[:, None] * vectors.square()).sum(dim=0) / vectors.square().sum(dim=0)


def _as_coordinates(name: str, value: Any, dim: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in value):
        value = flatten([t.detach() for t in value])
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a flat tensor or a list of tensors, got {type(value).__name__}"
        )
    value = value.detach().reshape(-1)
    if value.numel() != dim:
        raise ValueError(f"{name} must hold {dim} coordinates, got {value.numel()}")
    return value.to(dtype=like.dtype, device=like.device)


def ire_mask_quality(
    ire_or_mask: Any,
    eigenvectors: Any,
    flat_eigenvectors: Any = None,
    *,
    params: Sequence[torch.Tensor] | None = None,
    gradient: Any = None,
    curvature_diagonal: Any = None,
) -> MaskQuality:
    r"""How much of the sharp and of the flat eigenvectors the mask holds, and how much is inert.

    With :math:`M = \operatorname{diag}(m)` and :math:`\gamma = |m|/d`:

    * ``sharp_mass_on_mask[i]`` :math:`= \lVert M v_i\rVert^2/\lVert v_i\rVert^2` for each
      sharp eigenvector: the share of its squared mass IRE amplifies (ideal 0, random
      :math:`\gamma`); ``sharp_separation`` is their mean over :math:`\gamma`;
    * ``flat_mass_on_mask[j]`` :math:`= \lVert M u_j\rVert^2/\lVert u_j\rVert^2` for each given
      flat eigenvector, and ``mean_flat_mass_on_mask`` their mean, which for orthonormal
      :math:`u_j` is :math:`\operatorname{Tr}(M P_F)/\dim F`: ideal 1, reached when
      :math:`F \subseteq \operatorname{span}\{e_i : m_i = 1\}` (so at most :math:`|m|`
      eigenvectors), random :math:`\gamma`. Take :math:`u_j` the eigenvectors of smallest
      nonzero :math:`|\lambda|` (:func:`~samhess.analysis.gains.smallest_magnitude_eigenpairs`
      with ``skip_null=True``): the null space of a network's batch Hessian is spanned in part
      by the inert coordinates themselves, and a mask that holds it amplifies nothing;
    * with ``gradient`` and ``curvature_diagonal``, the inert coordinates are those where both
      are exactly zero; ``inert_fraction`` is their share of all coordinates (what a random
      mask spends on them) and ``mask_inert_share`` their share of the mask's coordinates. A
      diagonal-ranked mask takes them first: their curvature estimate is the smallest possible.

    The mask measured against the complement of the sharp eigenvectors,
    :math:`\operatorname{Tr}(M P_F)/\dim F` with :math:`\dim F = d - k`, cannot exceed about
    :math:`\gamma d/(d - k)`, whatever the mask, and is not reported.

    Args:
        ire_or_mask: an :class:`~samhess.optim.IRE`, a list of 0/1 mask tensors, or a flat one.
        eigenvectors: the sharp eigenvectors, ``(dim, k)``, or an eigenpair result.
        flat_eigenvectors: optional ``(dim, n)`` flat eigenvectors.
        params: see :func:`flat_mask_vector`.
        gradient: the batch gradient, flat or one tensor per parameter, in the mask's
            coordinate order (``params`` if given, else the IRE's parameter order).
        curvature_diagonal: the diagonal of a curvature matrix in the same order (IRE's
            ``estimate``, a Fisher, Gauss-Newton or Hessian diagonal); for a positive
            semi-definite curvature a zero diagonal entry means a zero row and column.

    Returns:
        A :class:`~samhess.analysis.results.MaskQuality`.

    Raises:
        ValueError: for a mask with values other than 0 and 1, shapes that do not match, or only
            one of ``gradient`` and ``curvature_diagonal``.
        TypeError: for arguments of the wrong type.
    """
    mask = flat_mask_vector(ire_or_mask, params)
    vectors = getattr(eigenvectors, "eigenvectors", eigenvectors)
    floating = isinstance(vectors, torch.Tensor) and vectors.is_floating_point()
    mask = mask.to(dtype=vectors.dtype if floating else torch.float64)
    dim = mask.numel()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("the mask must hold only 0 and 1 values")
    if (gradient is None) != (curvature_diagonal is None):
        raise ValueError(
            "gradient and curvature_diagonal must be given together (the inert coordinates "
            "are those where both vanish)"
        )
    sharp, _ = as_directions(eigenvectors, dim, mask, name="eigenvectors")
    count = float(mask.sum())
    fraction = count / dim
    sharp_mass = _mass_on_mask(mask, sharp)
    mean_sharp = float(sharp_mass.mean())

    flat_mass = mean_flat = None
    if flat_eigenvectors is not None:
        flat, _ = as_directions(flat_eigenvectors, dim, mask, name="flat_eigenvectors")
        flat_masses = _mass_on_mask(mask, flat)
        flat_mass, mean_flat = flat_masses.tolist(), float(flat_masses.mean())

    inert_fraction = mask_inert_share = None
    if gradient is not None:
        gradient = _as_coordinates("gradient", gradient, dim, mask)
        diagonal = _as_coordinates("curvature_diagonal", curvature_diagonal, dim, mask)
        inert = ((gradient == 0) & (diagonal == 0)).to(mask.dtype)
        inert_fraction = float(inert.mean())
        mask_inert_share = float((inert * mask).sum()) / count if count > 0 else math.nan
    return MaskQuality(
        dim=dim,
        mask_fraction=fraction,
        sharp_mass_on_mask=sharp_mass.tolist(),
        mean_sharp_mass_on_mask=mean_sharp,
        sharp_separation=mean_sharp / fraction if fraction > 0 else math.nan,
        flat_mass_on_mask=flat_mass,
        mean_flat_mass_on_mask=mean_flat,
        inert_fraction=inert_fraction,
        mask_inert_share=mask_inert_share,
    )
