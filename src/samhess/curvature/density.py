"""The spectral density of a curvature operator by stochastic Lanczos quadrature."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samhess._validation import check_int_at_least, check_positive
from samhess.curvature.lanczos import lanczos_tridiagonal
from samhess.curvature.operators import as_operator
from samhess.curvature.trace import rademacher


@dataclass
class SpectralDensity:
    """A smoothed eigenvalue density :math:`\\phi_\\sigma(t)` on a grid, with its quadrature.

    Attributes:
        grid: ``(G,)`` points :math:`t`.
        density: ``(G,)`` values of :math:`\\phi_\\sigma(t)` (integrates to about 1 over ``grid``).
        nodes: ``(K,)`` quadrature nodes (Ritz values of every probe, concatenated).
        weights: ``(K,)`` quadrature weights, summing to 1.
        sigma: width of the Gaussian kernel.
        num_matvecs: operator-vector products spent.
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    num_matvecs: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "sigma": self.sigma,
            "num_matvecs": self.num_matvecs,
        }


def spectral_density(
    H: Any,
    num_probes: int = 4,
    lanczos_steps: int = 80,
    grid: int | torch.Tensor = 1000,
    sigma: float | None = None,
    seed: int = 0,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature for the eigenvalue density of ``H``.

    The density :math:`\\phi(t) = \\frac1n \\sum_i \\delta(t - \\lambda_i)` smoothed by a Gaussian
    :math:`g_\\sigma` satisfies :math:`\\phi_\\sigma(t) = \\frac1n \\operatorname{tr} g_\\sigma(tI - H)
    = \\mathbb E_v[v^\\top g_\\sigma(tI - H) v]` for unit random :math:`v`. For each probe, ``m``
    Lanczos steps from :math:`v` give :math:`T_m = Y \\Theta Y^\\top`, and Gauss quadrature gives

    .. math::

        v^\\top g_\\sigma(tI - H) v \\approx \\sum_{j=1}^m \\tau_j \\, g_\\sigma(t - \\theta_j),
        \\qquad \\tau_j = (e_1^\\top y_j)^2 ,

    exact for polynomials of degree :math:`2m - 1` (Golub & Meurant, "Matrices, moments and
    quadrature", 1994; Lin, Saad & Yang, SIAM Review 2016). Applied to network Hessians by
    Ghorbani, Krishnan & Xiao, "An investigation into neural net optimization via Hessian
    eigenvalue density", ICML 2019, and Papyan, "Traces of class/cross-class structure pervade
    deep learning spectra", JMLR 2020. The Lanczos basis is fully reorthogonalized, so no ghost
    eigenvalues distort the weights.

    Args:
        H: a curvature operator or a square tensor.
        num_probes: random (Rademacher) start vectors; the estimate averages over them.
        lanczos_steps: Lanczos steps per probe (capped at ``dim``); resolves the extreme
            eigenvalues and ``lanczos_steps`` bumps of the bulk.
        grid: number of evenly spaced points covering the nodes plus five kernel widths, or the
            points themselves (1-D tensor).
        sigma: kernel width; default 1% of the node range (Ghorbani et al. use a small fraction
            of the range after rescaling to [-1, 1]).
        seed: seed of the probes.

    Returns:
        The density on the grid and the quadrature. Costs ``num_probes * lanczos_steps`` products
        (fewer if a Krylov space is exhausted early).
    """
    H = as_operator(H)
    num_probes = check_int_at_least("num_probes", num_probes, 1)
    lanczos_steps = check_int_at_least("lanczos_steps", lanczos_steps, 1)
    seed = check_int_at_least("seed", seed, 0)
    generator = torch.Generator(device=H.device).manual_seed(seed)
    all_nodes, all_weights, matvecs = [], [], 0
    for _ in range(num_probes):
        start = rademacher(H.dim, 1, generator, H)[:, 0]
        projected = lanczos_tridiagonal(lambda v: H @ v, start, lanczos_steps)
        matvecs += projected.shape[0]
        theta, vectors = torch.linalg.eigh(projected)
        all_nodes.append(theta)
        all_weights.append(vectors[0].square() / num_probes)
    nodes = torch.cat(all_nodes).cpu()
    weights = torch.cat(all_weights).cpu()
    low, high = float(nodes.min()), float(nodes.max())
    if sigma is None:
        width = high - low
        sigma = 0.01 * width if width > 0 else max(abs(high), 1.0) * 1e-3
    sigma = check_positive("sigma", sigma)
    if isinstance(grid, torch.Tensor):
        if grid.ndim != 1 or grid.numel() < 2:
            raise ValueError(f"grid must be a 1-D tensor of at least 2 points, got shape {tuple(grid.shape)}")
        points = grid.detach().to(device="cpu", dtype=nodes.dtype)
    else:
        count = check_int_at_least("grid", grid, 2)
        points = torch.linspace(low - 5 * sigma, high + 5 * sigma, count, dtype=nodes.dtype)
    standardized = (points[:, None] - nodes[None, :]) / sigma
    kernel = torch.exp(-0.5 * standardized**2) / (sigma * math.sqrt(2 * math.pi))
    return SpectralDensity(points, kernel @ weights, nodes, weights, float(sigma), matvecs)


def plot_spectral_density(
    density: SpectralDensity, path: str | Path, *, log_scale: bool = True, title: str | None = None
) -> Path:
    """Write a PNG of the density (log scale by default: the bulk and the outliers differ by
    orders of magnitude) with the quadrature nodes marked; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = density.density.numpy()
    if log_scale:
        floor = max(values.max() * 1e-12, 1e-300)
        axes.semilogy(density.grid.numpy(), values.clip(min=floor))
    else:
        axes.plot(density.grid.numpy(), values)
    axes.plot(density.nodes.numpy(), [axes.get_ylim()[0]] * len(density.nodes), "|", color="gray", alpha=0.5)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density")
    axes.set_title(title or f"spectral density (sigma={density.sigma:.3g}, {density.num_matvecs} matvecs)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
