"""The diagonal of a curvature matrix: exact, Hutchinson, or Gauss-Newton-Bartlett."""

from __future__ import annotations

from typing import Any

import torch

from samhess._validation import check_choice, check_int_at_least
from samhess.curvature.fisher import FisherOperator
from samhess.curvature.ggn import GGNOperator
from samhess.curvature.operators import as_operator, identity_columns
from samhess.curvature.trace import rademacher
from samhess.curvature.vectors import flatten

DIAGONAL_METHODS = ("hutchinson", "exact", "gnb")


def diagonal(
    H: Any,
    method: str = "hutchinson",
    num_matvecs: int = 100,
    seed: int = 0,
    *,
    block_size: int = 64,
) -> torch.Tensor:
    """The diagonal of ``H`` as a flat ``(dim,)`` tensor.

    * ``"exact"``: :math:`H_{ii} = e_i^\\top H e_i` from products with blocks of identity columns;
      ``dim`` products, for small problems.
    * ``"hutchinson"`` (Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix",
      Appl. Numer. Math. 2007): :math:`\\frac1m \\sum_{j=1}^m \\omega_j \\odot H\\omega_j` with
      Rademacher :math:`\\omega_j`; unbiased, entry :math:`i` has variance
      :math:`\\frac1m \\sum_{l \\ne i} H_{il}^2`.
    * ``"gnb"``: for a :class:`~samhess.curvature.ggn.GGNOperator` or
      :class:`~samhess.curvature.fisher.FisherOperator`, the Gauss-Newton-Bartlett estimate of
      the Gauss-Newton diagonal (:func:`~samhess.curvature.fisher.fisher_diagonal`) with
      ``num_matvecs`` label draws; each draw costs one gradient, not a product.

    Args:
        H: a curvature operator or a square tensor.
        method: ``"hutchinson"`` (default), ``"exact"`` or ``"gnb"``.
        num_matvecs: products (Hutchinson) or label draws (GNB); unused by ``"exact"``.
        seed: seed of the random vectors or label draws.
        block_size: columns per product for ``"exact"`` (memory of ``block_size`` vectors).

    Raises:
        ValueError: if ``method`` is unknown, ``num_matvecs < 1``, or ``"gnb"`` is asked of an
            operator that is not a Gauss-Newton or Fisher operator.
    """
    method = check_choice("method", method, DIAGONAL_METHODS)
    seed = check_int_at_least("seed", seed, 0)
    if method == "gnb":
        return _gauss_newton_bartlett(H, check_int_at_least("num_matvecs", num_matvecs, 1), seed)
    H = as_operator(H)
    if method == "exact":
        block_size = check_int_at_least("block_size", block_size, 1)
        entries = []
        for start in range(0, H.dim, block_size):
            stop = min(start + block_size, H.dim)
            block = identity_columns(H.dim, start, stop, dtype=H.dtype, device=H.device)
            entries.append((H @ block)[start:stop].diagonal())
        return torch.cat(entries)
    num_matvecs = check_int_at_least("num_matvecs", num_matvecs, 1)
    generator = torch.Generator(device=H.device).manual_seed(seed)
    probes = rademacher(H.dim, num_matvecs, generator, H)
    return (probes * (H @ probes)).mean(dim=1)


def _gauss_newton_bartlett(H: Any, num_samples: int, seed: int) -> torch.Tensor:
    if isinstance(H, FisherOperator):
        fisher = H
    elif isinstance(H, GGNOperator):
        fisher = FisherOperator(
            H.model, H.loss_fn, H.data, H.params, eval_mode=H.eval_mode,
            weight_of=H.weight_of, logits_of=H.logits_of,
        )
    else:
        raise ValueError(
            "method='gnb' estimates the Gauss-Newton diagonal; H must be a GGNOperator or "
            f"FisherOperator, got {type(H).__name__}"
        )
    generator = torch.Generator(device=fisher.device).manual_seed(seed)
    return flatten(fisher.gauss_newton_bartlett_diagonal(num_samples, generator))
