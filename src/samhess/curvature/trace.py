"""Stochastic trace estimation: Hutchinson, Hutch++ and XTrace."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from samhess._validation import check_choice, check_int_at_least
from samhess.curvature.operators import as_operator

TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")


@dataclass
class TraceEstimate:
    """An estimate of :math:`\\operatorname{tr}(H)`.

    Attributes:
        estimate: the estimate.
        stderr: its standard error as estimated from the same products (``nan`` when it cannot
            be: fewer than two random samples).
        num_matvecs: operator-vector products spent.
        method: the estimator.
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (a ``nan`` standard error becomes ``None``)."""
        return {
            "estimate": self.estimate,
            "stderr": self.stderr if math.isfinite(self.stderr) else None,
            "num_matvecs": self.num_matvecs,
            "method": self.method,
        }


def rademacher(dim: int, count: int, generator: torch.Generator, like: Any) -> torch.Tensor:
    """A ``(dim, count)`` matrix of independent :math:`\\pm 1` entries in ``like``'s dtype and device."""
    signs = torch.randint(0, 2, (dim, count), generator=generator, device=like.device)
    return (2 * signs - 1).to(like.dtype)


def trace(H: Any, num_matvecs: int, method: str = "hutch++", seed: int = 0) -> TraceEstimate:
    """Estimate :math:`\\operatorname{tr}(H)` from ``num_matvecs`` products with ``H``.

    All three estimators are unbiased and use Rademacher test vectors :math:`\\omega`
    (:math:`\\mathbb E[\\omega\\omega^\\top] = I`).

    * ``"hutchinson"`` (Hutchinson, Commun. Stat. Simul. Comput. 1990): the mean of
      :math:`\\omega_i^\\top H \\omega_i` over ``num_matvecs`` vectors; variance
      :math:`2(\\|H\\|_F^2 - \\sum_i H_{ii}^2)/m`.
    * ``"hutch++"`` (Meyer, Musco, Musco & Woodruff, "Hutch++: optimal stochastic trace
      estimation", SOSA 2021): with :math:`s = \\lfloor m/3 \\rfloor`, take :math:`Q` an orthonormal
      basis of :math:`H S` for :math:`s` test vectors, count :math:`\\operatorname{tr}(Q^\\top H Q)`
      exactly (:math:`s` products), and estimate the rest with Hutchinson on the
      :math:`m - 2s` deflated vectors :math:`(I - QQ^\\top)\\omega`. The error falls like
      :math:`1/m` instead of :math:`1/\\sqrt m` when the spectrum has a few large eigenvalues, as
      network Hessians do.
    * ``"xtrace"`` (Epperly, Tropp & Webber, "XTrace: making the most of every sample in
      stochastic trace estimation", SIAM J. Matrix Anal. Appl. 2024): :math:`n = \\lfloor m/2
      \\rfloor` vectors, each used both for the low-rank part and, left out in turn, for the
      Hutchinson part; the mean of the :math:`n` leave-one-out estimates

      .. math::

          t_i = \\operatorname{tr}(Q_{(i)}^\\top H Q_{(i)})
              + \\omega_i^\\top (I - Q_{(i)}Q_{(i)}^\\top) H (I - Q_{(i)}Q_{(i)}^\\top) \\omega_i,
          \\quad Q_{(i)} = \\operatorname{orth}(H \\Omega_{-i}),

      computed from :math:`H\\Omega` and :math:`HQ` only; its standard error comes from the spread
      of the :math:`t_i`.

    Args:
        H: a curvature operator or a square tensor.
        num_matvecs: the budget of products; ``"hutch++"`` spends it all, ``"xtrace"`` an even
            number (one fewer if odd), and below 3 (hutch++) or 2 (xtrace) they fall back to
            Hutchinson.
        method: ``"hutchinson"``, ``"hutch++"`` (default) or ``"xtrace"``.
        seed: seed of the test vectors.

    Raises:
        ValueError: if ``num_matvecs < 1`` or ``method`` is unknown.
    """
    H = as_operator(H)
    num_matvecs = check_int_at_least("num_matvecs", num_matvecs, 1)
    method = check_choice("method", method, TRACE_METHODS)
    seed = check_int_at_least("seed", seed, 0)
    generator = torch.Generator(device=H.device).manual_seed(seed)
    if method == "hutch++" and num_matvecs >= 3:
        return _hutch_plus_plus(H, num_matvecs, generator)
    if method == "xtrace" and num_matvecs >= 2:
        return _xtrace(H, num_matvecs // 2, generator)
    return _hutchinson(H, num_matvecs, generator)


def _mean_and_stderr(samples: torch.Tensor) -> tuple[float, float]:
    count = samples.numel()
    mean = float(samples.mean())
    stderr = float(samples.std() / math.sqrt(count)) if count > 1 else math.nan
    return mean, stderr


def _hutchinson(H: Any, count: int, generator: torch.Generator) -> TraceEstimate:
    probes = rademacher(H.dim, count, generator, H)
    samples = (probes * (H @ probes)).sum(dim=0)
    estimate, stderr = _mean_and_stderr(samples)
    return TraceEstimate(estimate, stderr, count, "hutchinson")


def _hutch_plus_plus(H: Any, budget: int, generator: torch.Generator) -> TraceEstimate:
    sketch_size = budget // 3
    residual_size = budget - 2 * sketch_size
    sketch = H @ rademacher(H.dim, sketch_size, generator, H)
    basis = torch.linalg.qr(sketch).Q
    low_rank = float(torch.trace(basis.T @ (H @ basis)))
    probes = rademacher(H.dim, residual_size, generator, H)
    probes = probes - basis @ (basis.T @ probes)
    samples = (probes * (H @ probes)).sum(dim=0)
    mean, stderr = _mean_and_stderr(samples)
    spent = sketch_size + basis.shape[1] + residual_size
    return TraceEstimate(low_rank + mean, stderr, spent, "hutch++")


def _xtrace(H: Any, count: int, generator: torch.Generator) -> TraceEstimate:
    probes = rademacher(H.dim, count, generator, H)
    images = H @ probes
    basis, triangle = torch.linalg.qr(images)
    projected = basis.T @ (H @ basis)
    projected = (projected + projected.T) / 2
    # Coordinates in `basis`: of the probes (W) and of their images (R = Q^T H Omega).
    probe_coords = basis.T @ probes
    quadratic = (probes * images).sum(dim=0)
    projectors = _leave_one_out_projectors(triangle)
    samples = torch.empty(count, dtype=H.dtype, device=H.device)
    for i in range(count):
        kept = projectors[i]
        c = kept @ probe_coords[:, i]
        samples[i] = (
            torch.sum(kept * projected)
            + quadratic[i]
            - 2 * triangle[:, i] @ c
            + c @ projected @ c
        )
    estimate, stderr = _mean_and_stderr(samples)
    return TraceEstimate(estimate, stderr, 2 * count, "xtrace")


def _leave_one_out_projectors(triangle: torch.Tensor) -> torch.Tensor:
    """Projectors :math:`\\Pi_i` onto the range of ``triangle`` without column ``i``, ``(n, n, n)``.

    When ``triangle`` (:math:`R` of :math:`H\\Omega = QR`) is well conditioned, dropping column
    :math:`i` removes exactly the direction :math:`s_i \\propto R^{-\\top} e_i` (orthogonal to every
    other column), so :math:`\\Pi_i = I - s_i s_i^\\top`. A numerically rank-deficient :math:`R`
    (a low-rank operator) takes the range of the remaining columns from an SVD instead.
    """
    count = triangle.shape[0]
    identity = torch.eye(count, dtype=triangle.dtype, device=triangle.device)
    singular = torch.linalg.svdvals(triangle)
    rank_tol = singular.max() * count * torch.finfo(triangle.dtype).eps
    if count == 1 or bool(singular.min() > 1e3 * rank_tol):
        directions = torch.linalg.solve_triangular(triangle.T, identity, upper=False)
        directions = directions / torch.linalg.vector_norm(directions, dim=0, keepdim=True)
        return identity - directions.T.unsqueeze(2) * directions.T.unsqueeze(1)
    projectors = torch.empty(count, count, count, dtype=triangle.dtype, device=triangle.device)
    for i in range(count):
        others = torch.cat([triangle[:, :i], triangle[:, i + 1 :]], dim=1)
        left, values, _ = torch.linalg.svd(others, full_matrices=False)
        span = left[:, values > rank_tol]
        projectors[i] = span @ span.T
    return projectors
