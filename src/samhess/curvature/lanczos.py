"""The Lanczos process with full reorthogonalization, shared by eigensolvers and quadrature.

For a symmetric :math:`A` and orthonormal rows :math:`v_0, \\dots, v_j` of ``basis``, one step
applies :math:`A` to :math:`v_j`, orthogonalizes the result against every basis vector with two
passes of classical Gram-Schmidt ("twice is enough", Giraud et al., Numer. Math. 2005), records the
coefficients in the projected matrix :math:`T = V^\\top A V`, and returns the remainder, whose
norm is the coupling :math:`\\beta_j` to the next vector:

.. math::

    A V_{j+1} = V_{j+1} T_{j+1} + \\beta_j v_{j+1} e_{j+1}^\\top .

Full reorthogonalization keeps the basis orthonormal to working precision, so no spurious
("ghost") copies of converged eigenvalues appear (Paige 1971; Golub & Van Loan, Matrix
Computations, 4th ed., section 10.1). It stores the basis, one vector per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lanczos_step(
    apply: Callable[[torch.Tensor], torch.Tensor],
    basis: torch.Tensor,
    projected: torch.Tensor,
    index: int,
) -> tuple[torch.Tensor, float, float]:
    """Expand the Krylov basis by the image of ``basis[index]``.

    Args:
        apply: ``v -> A v`` for a flat ``v``.
        basis: rows ``0..index`` orthonormal; at least ``index + 1`` rows.
        projected: the matrix :math:`T`; column and row ``index`` (entries ``0..index``) are
            written.
        index: the vector to expand.

    Returns:
        The remainder :math:`w` (orthogonal to ``basis[:index + 1]``), its norm :math:`\\beta`,
        and :math:`\\|A v_{index}\\|` (a lower bound on :math:`\\|A\\|`).
    """
    image = apply(basis[index])
    image_norm = float(torch.linalg.vector_norm(image))
    previous = basis[: index + 1]
    coefficients = previous @ image
    remainder = image - previous.T @ coefficients
    correction = previous @ remainder
    remainder = remainder - previous.T @ correction
    coefficients = coefficients + correction
    projected[: index + 1, index] = coefficients
    projected[index, : index + 1] = coefficients
    return remainder, float(torch.linalg.vector_norm(remainder)), image_norm


def is_breakdown(beta: float, scale: float, steps: int, dtype: torch.dtype) -> bool:
    """Whether :math:`\\beta` is rounding noise, i.e. the Krylov space is invariant under :math:`A`."""
    return beta <= 10.0 * torch.finfo(dtype).eps * math.sqrt(steps) * scale


def orthonormal_random(
    basis: torch.Tensor, count: int, generator: torch.Generator
) -> torch.Tensor | None:
    """A random unit vector orthogonal to ``basis[:count]``, or ``None`` if they span the space."""
    dim = basis.shape[1]
    if count >= dim:
        return None
    vector = torch.randn(dim, generator=generator, dtype=basis.dtype, device=basis.device)
    previous = basis[:count]
    for _ in range(2):
        vector = vector - previous.T @ (previous @ vector)
    return vector / torch.linalg.vector_norm(vector)


def lanczos_tridiagonal(
    apply: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """The projected matrix :math:`T_m = V_m^\\top A V_m` of ``steps`` Lanczos steps from ``start``.

    Stops early when the Krylov space of ``start`` is invariant (then :math:`T` is smaller and
    its Ritz values are eigenvalues of :math:`A`). In exact arithmetic :math:`T` is tridiagonal;
    here it is the full projection, which is what quadrature needs.
    """
    dim = start.shape[0]
    steps = min(steps, dim)
    basis = torch.zeros(steps, dim, dtype=start.dtype, device=start.device)
    projected = torch.zeros(steps, steps, dtype=start.dtype, device=start.device)
    basis[0] = start / torch.linalg.vector_norm(start)
    scale = 0.0
    for index in range(steps):
        remainder, beta, image_norm = lanczos_step(apply, basis, projected, index)
        scale = max(scale, image_norm)
        if index + 1 == steps or is_breakdown(beta, scale, index + 1, start.dtype):
            return projected[: index + 1, : index + 1]
        basis[index + 1] = remainder / beta
    return projected
