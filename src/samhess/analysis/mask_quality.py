r"""Does IRE's coordinate mask separate the Hessian's sharp and flat eigenspaces?

IRE (Wang et al., NeurIPS 2024) amplifies the step on the coordinates whose diagonal curvature
estimate is smallest: :math:`D \leftarrow (I + \kappa M) D` with :math:`M = \operatorname{diag}(m)`,
:math:`m \in \{0, 1\}^d`. The seed note reads :math:`M` as the projection onto the flat
directions, but it projects onto *coordinates*: a sharp eigenvector :math:`v` is amplified by
:math:`\kappa \lVert M v\rVert^2` along itself whenever it has mass on coordinates the mask
calls flat. :func:`ire_mask_quality` measures that mass for each sharp eigenvector, and the share
of a flat subspace :math:`F` the mask covers, :math:`\operatorname{Tr}(M P_F)/\dim F`. A random
mask selecting a fraction :math:`\gamma` of the coordinates gives :math:`\gamma` for both, in
expectation; a mask that separates the eigenspaces gives 0 and 1.
"""

from __future__ import annotations

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


def ire_mask_quality(
    ire_or_mask: Any,
    eigenvectors: Any,
    flat_eigenvectors: Any = None,
    *,
    params: Sequence[torch.Tensor] | None = None,
) -> MaskQuality:
    r"""How much of each sharp eigenvector the mask calls flat, and how much flat space it covers.

    With :math:`M = \operatorname{diag}(m)` and :math:`\gamma = |m|/d`:

    * ``sharp_mass_on_mask[i]`` :math:`= \lVert M v_i\rVert^2/\lVert v_i\rVert^2` for each
      sharp eigenvector: the share of its squared mass IRE amplifies (ideal 0, random
      :math:`\gamma`); ``sharp_separation`` is their mean over :math:`\gamma`;
    * ``flat_coverage`` :math:`= \operatorname{Tr}(M P_F)/\dim F`, with :math:`F` the span of
      ``flat_eigenvectors`` if given, else the orthogonal complement of the sharp
      eigenvectors (:math:`\operatorname{Tr}(M P_F) = |m| - \operatorname{Tr}(Q^\top M Q)`,
      :math:`Q` an orthonormal basis of the sharp span); ideal 1, random :math:`\gamma`;
    * ``mask_in_flat`` :math:`= \operatorname{Tr}(M P_F)/|m|`: the share of the mask's span
      inside :math:`F`.

    Args:
        ire_or_mask: an :class:`~samhess.optim.IRE`, a list of 0/1 mask tensors, or a flat one.
        eigenvectors: the sharp eigenvectors, ``(dim, k)``, or an eigenpair result.
        flat_eigenvectors: optional ``(dim, m)`` flat eigenvectors (e.g. smallest
            :math:`|\lambda|`).
        params: see :func:`flat_mask_vector`.

    Returns:
        A :class:`~samhess.analysis.results.MaskQuality`.
    """
    mask = flat_mask_vector(ire_or_mask, params)
    vectors = getattr(eigenvectors, "eigenvectors", eigenvectors)
    floating = isinstance(vectors, torch.Tensor) and vectors.is_floating_point()
    mask = mask.to(dtype=vectors.dtype if floating else torch.float64)
    dim = mask.numel()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("the mask must hold only 0 and 1 values")
    sharp, _ = as_directions(eigenvectors, dim, mask, name="eigenvectors")
    count = float(mask.sum())
    fraction = count / dim
    sharp_mass = _mass_on_mask(mask, sharp)
    mean_sharp = float(sharp_mass.mean())

    flat_mass = None
    if flat_eigenvectors is not None:
        flat, _ = as_directions(flat_eigenvectors, dim, mask, name="flat_eigenvectors")
        q = torch.linalg.qr(flat).Q
        trace_on_flat = float((mask[:, None] * q.square()).sum())
        flat_dim = q.shape[1]
        flat_mass = _mass_on_mask(mask, flat).tolist()
        flat_kind = "given"
    else:
        q = torch.linalg.qr(sharp).Q
        trace_on_flat = count - float((mask[:, None] * q.square()).sum())
        flat_dim = dim - q.shape[1]
        flat_kind = "complement"
    return MaskQuality(
        dim=dim,
        mask_fraction=fraction,
        sharp_mass_on_mask=sharp_mass.tolist(),
        mean_sharp_mass_on_mask=mean_sharp,
        sharp_separation=mean_sharp / fraction if fraction > 0 else float("nan"),
        flat=flat_kind,
        flat_coverage=trace_on_flat / flat_dim if flat_dim > 0 else float("nan"),
        flat_mass_on_mask=flat_mass,
        mask_in_flat=trace_on_flat / count if count > 0 else float("nan"),
    )
