"""Extreme eigenpairs of a curvature operator by restarted Lanczos."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from samhess._validation import check_choice, check_int_at_least, check_positive
from samhess.curvature.lanczos import is_breakdown, lanczos_step, orthonormal_random
from samhess.curvature.operators import as_operator

WHICH = ("largest", "smallest", "magnitude")
EIGEN_METHODS = ("lanczos", "arpack")


@dataclass
class Eigenpairs:
    """Eigenpairs :math:`H u_i = \\lambda_i u_i`.

    Attributes:
        eigenvalues: ``(k,)``; largest first for ``which="largest"``, smallest first for
            ``"smallest"``, largest magnitude first for ``"magnitude"``.
        eigenvectors: ``(dim, k)``, unit columns, column ``i`` belonging to ``eigenvalues[i]``.
        num_matvecs: operator-vector products spent.
        which: the part of the spectrum asked for.
        method: ``"lanczos"`` or ``"arpack"``.
        converged: whether every pair met the tolerance.
        residual_norms: ``(k,)`` estimates of :math:`\\|H u_i - \\lambda_i u_i\\|` (Lanczos only;
            exact up to rounding).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    num_matvecs: int
    which: str
    method: str
    converged: bool = True
    residual_norms: torch.Tensor | None = field(default=None)

    def to_dict(self, include_eigenvectors: bool = False) -> dict[str, Any]:
        """JSON-ready values; eigenvectors (``dim * k`` numbers) only when asked for."""
        result: dict[str, Any] = {
            "eigenvalues": self.eigenvalues.tolist(),
            "num_matvecs": self.num_matvecs,
            "which": self.which,
            "method": self.method,
            "converged": self.converged,
            "residual_norms": None if self.residual_norms is None else self.residual_norms.tolist(),
        }
        if include_eigenvectors:
            result["eigenvectors"] = self.eigenvectors.T.tolist()
        return result


def eigenpairs(
    H: Any,
    k: int = 1,
    which: str = "largest",
    tol: float | None = None,
    seed: int = 0,
    method: str = "lanczos",
    *,
    num_lanczos_vectors: int | None = None,
    max_matvecs: int | None = None,
) -> Eigenpairs:
    """The ``k`` extreme eigenpairs of the symmetric operator ``H``.

    ``method="lanczos"`` (default) runs the Krylov-Schur restarted Lanczos method in torch, on
    the operator's device (Stewart, "A Krylov-Schur algorithm for large eigenproblems", SIAM J.
    Matrix Anal. Appl. 2001; symmetric case = thick restart, Wu & Simon, SIAM J. Matrix Anal.
    Appl. 2000). With :math:`V_m` an orthonormal Krylov basis (full reorthogonalization, see
    :mod:`samhess.curvature.lanczos`) and :math:`T_m = V_m^\\top H V_m = Y \\Theta Y^\\top`, the Ritz
    pairs :math:`(\\theta_i, V_m y_i)` have residuals

    .. math::

        \\| H V_m y_i - \\theta_i V_m y_i \\| = |\\beta_m \\, e_m^\\top y_i| ,

    checked after every product; the iteration stops as soon as the ``k`` wanted pairs satisfy
    :math:`|\\beta_m e_m^\\top y_i| \\le \\mathrm{tol} \\cdot |\\theta_i|` (or reach rounding level). When
    the basis is full, the wanted Ritz vectors and the residual vector are kept and the rest is
    discarded. ``method="arpack"`` calls :func:`scipy.sparse.linalg.eigsh` (implicitly restarted
    Lanczos, on the CPU in NumPy) on :meth:`as_linear_operator`-style products.

    The torch method is the default because it needed fewer products than ARPACK to reach the
    same tolerance in ``benchmarks/bench_curvature.py`` (it can stop between restarts) and keeps
    vectors on the GPU; PyHessian's power iteration with deflation needs several times more.

    Args:
        H: a curvature operator (``dim``, ``dtype``, ``device``, ``@``) or a square tensor.
        k: number of eigenpairs, ``1 <= k < dim``.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"``.
        tol: relative residual tolerance; default :math:`\\sqrt{\\varepsilon}` of the dtype
            (about 3e-4 in float32, 1.5e-8 in float64). The eigenvalue error is about
            :math:`\\mathrm{residual}^2 / \\mathrm{gap}`, far below the tolerance.
        seed: seed of the random start vector.
        method: ``"lanczos"`` or ``"arpack"``.
        num_lanczos_vectors: basis size between restarts (memory: that many vectors of
            ``dim``); default ``max(2k + 1, 20)`` capped at ``dim``.
        max_matvecs: give up (with a warning and ``converged=False``) after this many products;
            default ``max(100 * num_lanczos_vectors, 1000)``.

    Raises:
        ValueError: if ``k >= dim`` or ``k < 1``, or an option is out of range.
    """
    H = as_operator(H)
    k = check_int_at_least("k", k, 1)
    if k >= H.dim:
        raise ValueError(f"k must be smaller than the dimension {H.dim}, got k={k}")
    which = check_choice("which", which, WHICH)
    method = check_choice("method", method, EIGEN_METHODS)
    seed = check_int_at_least("seed", seed, 0)
    tol = math.sqrt(torch.finfo(H.dtype).eps) if tol is None else check_positive("tol", tol)
    if num_lanczos_vectors is None:
        num_lanczos_vectors = max(2 * k + 1, 20)
    num_lanczos_vectors = min(check_int_at_least("num_lanczos_vectors", num_lanczos_vectors, k + 1), H.dim)
    if max_matvecs is None:
        max_matvecs = max(100 * num_lanczos_vectors, 1000)
    max_matvecs = check_int_at_least("max_matvecs", max_matvecs, 1)
    if method == "arpack":
        return _arpack(H, k, which, tol, seed, num_lanczos_vectors, max_matvecs)
    return _krylov_schur(H, k, which, tol, seed, num_lanczos_vectors, max_matvecs)


def _wanted_order(values: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of ``values``, most wanted first."""
    if which == "largest":
        return torch.argsort(values, descending=True)
    if which == "smallest":
        return torch.argsort(values)
    return torch.argsort(values.abs(), descending=True)


def _start_vector(
    dim: int, dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator(device=device).manual_seed(seed)
    vector = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    return vector / torch.linalg.vector_norm(vector), generator


def _krylov_schur(
    H: Any, k: int, which: str, tol: float, seed: int, size: int, max_matvecs: int
) -> Eigenpairs:
    dim, dtype, device = H.dim, H.dtype, H.device
    basis = torch.zeros(size + 1, dim, dtype=dtype, device=device)
    projected = torch.zeros(size, size, dtype=dtype, device=device)
    basis[0], generator = _start_vector(dim, dtype, device, seed)
    floor = 10.0 * torch.finfo(dtype).eps
    keep = min(max(k, (k + size) // 2), size - 1)
    scale = 0.0
    matvecs = 0
    length = 0  # vectors in the basis whose image is in `projected`
    while True:
        remainder, beta, image_norm = lanczos_step(lambda v: H @ v, basis, projected, length)
        matvecs += 1
        length += 1
        scale = max(scale, image_norm)
        if is_breakdown(beta, scale, length, dtype):
            beta = 0.0
            fresh = orthonormal_random(basis, length, generator)
            basis[length] = 0.0 if fresh is None else fresh
        else:
            basis[length] = remainder / beta
        theta, vectors = torch.linalg.eigh(projected[:length, :length])
        order = _wanted_order(theta, which)
        if length >= k:
            wanted = order[:k]
            residuals = beta * vectors[length - 1, wanted].abs()
            norm = max(float(theta.abs().max()), scale)
            limits = torch.clamp(tol * theta[wanted].abs(), min=floor * norm)
            converged = bool((residuals <= limits).all())
            exhausted = matvecs >= max_matvecs
            if converged or exhausted or length == dim:
                if exhausted and not converged:
                    warnings.warn(
                        f"eigenpairs: {k} {which} eigenpairs not converged to tol={tol} after "
                        f"{matvecs} matvecs; raise max_matvecs or num_lanczos_vectors",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                ritz_vectors = basis[:length].T @ vectors[:, wanted]
                return Eigenpairs(
                    theta[wanted].clone(), ritz_vectors, matvecs, which, "lanczos",
                    converged or length == dim, residuals.clone(),
                )
        if length == size:
            # Thick restart: keep the `keep` most wanted Ritz vectors and the residual vector.
            kept = order[:keep]
            basis[:keep] = vectors[:, kept].T @ basis[:length]
            basis[keep] = basis[length]
            projected.zero_()
            projected[:keep, :keep] = torch.diag(theta[kept])
            length = keep


def _arpack(
    H: Any, k: int, which: str, tol: float, seed: int, size: int, max_matvecs: int
) -> Eigenpairs:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    count = 0
    np_dtype = torch.empty((), dtype=H.dtype).numpy().dtype

    def apply(x: np.ndarray) -> np.ndarray:
        nonlocal count
        x = torch.from_numpy(np.ascontiguousarray(x)).to(device=H.device, dtype=H.dtype)
        count += 1 if x.ndim == 1 else x.shape[1]
        return (H @ x).detach().cpu().numpy()

    operator = LinearOperator((H.dim, H.dim), matvec=apply, rmatvec=apply, dtype=np_dtype)
    start = _start_vector(H.dim, H.dtype, torch.device("cpu"), seed)[0].numpy()
    code = {"largest": "LA", "smallest": "SA", "magnitude": "LM"}[which]
    converged = True
    try:
        values, vectors = eigsh(
            operator, k=k, which=code, tol=tol, v0=start, ncv=size, maxiter=max(1, max_matvecs // size)
        )
    except ArpackNoConvergence as error:
        converged = False
        values, vectors = error.eigenvalues, error.eigenvectors
        warnings.warn(f"eigenpairs: ARPACK did not converge ({error})", RuntimeWarning, stacklevel=3)
    values_t = torch.from_numpy(np.asarray(values).copy())
    order = _wanted_order(values_t, which)
    return Eigenpairs(
        values_t[order].to(H.device),
        torch.from_numpy(np.asarray(vectors)[:, order.numpy()].copy()).to(H.device),
        count, which, "arpack", converged,
    )
