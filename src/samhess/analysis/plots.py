"""PNG figures of the analysis results.

The figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas, so they need
no display and leave pyplot's global state and backend alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from samhess._validation import check_choice
from samhess.analysis.landscape import LandscapeSlices
from samhess.analysis.results import DirectionalGains, SharpFlatGains, TaylorCheck, ValidityMap

__all__ = ["plot_gains", "plot_taylor", "plot_validity", "plot_landscape"]


def _new_figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(6.0, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


def _finite(values: list[float | None] | None) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in (values or [])], dtype=float)


def plot_gains(result: DirectionalGains | SharpFlatGains, path: str | Path) -> Path:
    """Measured gains against eigenvalue (or direction index), with the prediction line.

    For a :class:`~samhess.analysis.results.SharpFlatGains` the per-eigenvector sharp gains
    are plotted with the sharp and flat subspace gains as horizontal lines.

    Returns:
        The path written.
    """
    figure, axes = _new_figure()
    if isinstance(result, SharpFlatGains):
        x = _finite(result.eigenvalues)
        axes.plot(x, _finite(result.sharp_gains), "o", label="measured gain per eigenvector")
        axes.axhline(result.sharp_gain, color="C0", linestyle="--",
                     label=f"sharp subspace gain {result.sharp_gain:.3g}")
        axes.axhline(result.flat_gain, color="C2", linestyle="--",
                     label=f"flat ({result.flat}) gain {result.flat_gain:.3g}")
        if result.predicted_sharp_gain is not None:
            axes.axhline(result.predicted_sharp_gain, color="C1", linestyle=":",
                         label=f"predicted sharp gain {result.predicted_sharp_gain:.3g}")
        axes.set_xlabel("Hessian eigenvalue")
        title = f"{result.optimizer}: sharp/flat ratio {result.ratio:.3g}"
    elif isinstance(result, DirectionalGains):
        if result.eigenvalues is not None:
            x = _finite(result.eigenvalues)
            axes.set_xlabel("Hessian eigenvalue")
        else:
            x = np.arange(len(result.gains), dtype=float)
            axes.set_xlabel("direction")
        axes.plot(x, _finite(result.gains), "o", label="measured")
        if result.predictions is not None:
            label = f"prediction {result.prediction_formula}"
            if result.predictions_linear_in_eigenvalue:
                order = np.argsort(x)
                axes.plot(x[order], _finite(result.predictions)[order], "-", color="C1",
                          label=label)
            else:  # one prediction per direction (IRE's mask, ASAM): not a function of x
                axes.plot(x, _finite(result.predictions), "x", color="C1", label=label)
        title = f"{result.optimizer} over {result.reference}"
    else:
        raise TypeError(
            f"result must be DirectionalGains or SharpFlatGains, got {type(result).__name__}"
        )
    axes.axhline(1.0, color="0.6", linewidth=0.8)
    axes.set_ylabel("gain <v, D> / <v, D_ref>")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_taylor(result: TaylorCheck, path: str | Path) -> Path:
    """Relative Taylor remainders against the radius, log-log, with a slope-1 guide.

    Returns:
        The path written.
    """
    if not isinstance(result, TaylorCheck):
        raise TypeError(f"result must be a TaylorCheck, got {type(result).__name__}")
    figure, axes = _new_figure()
    rhos = np.array(result.rhos, dtype=float)
    grad = _finite(result.grad_rel_error)
    loss = _finite(result.loss_rel_error)
    axes.loglog(rhos, grad, "o-", label=f"gradient, slope {result.order:.2f}")
    axes.loglog(rhos, loss, "s-", label=f"loss, slope {result.loss_order:.2f}")
    anchor = grad[np.isfinite(grad) & (grad > 0)]
    if anchor.size:
        axes.loglog(rhos, anchor[0] * rhos / rhos[0], ":", color="0.5", label="slope 1")
    axes.set_xlabel("rho")
    axes.set_ylabel("remainder / correction")
    axes.set_title(f"Taylor check ({result.perturbation}), ||g|| = {result.grad_norm:.3g}",
                   fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_validity(result: ValidityMap, path: str | Path, against: str = "x") -> Path:
    """Gain error against :math:`x = \\rho\\lambda/\\lVert g\\rVert` (or against
    :math:`\\rho`), log-log, one colour per batch size.

    Args:
        result: the map.
        path: the PNG to write.
        against: ``"x"`` or ``"rho"``.

    Returns:
        The path written.
    """
    if not isinstance(result, ValidityMap):
        raise TypeError(f"result must be a ValidityMap, got {type(result).__name__}")
    against = check_choice("against", against, ("x", "rho"))
    figure, axes = _new_figure()
    for number, size in enumerate(result.batch_sizes):
        points = [p for p in result.points if p.batch_size == size]
        x = np.array([p.x if against == "x" else p.rho for p in points], dtype=float)
        error = np.array([p.gain_error for p in points], dtype=float)
        label = "full batch" if size >= result.num_examples else f"batch {size}"
        axes.loglog(x, np.maximum(error, 1e-6), "o", color=f"C{number}", label=label, alpha=0.8)
    if against == "rho":
        axes.set_xlabel("rho")
    else:
        axes.set_xlabel("x = rho lambda / ||g||" if result.mode == "sam" else "x = rho lambda")
    axes.set_ylabel("|measured - (1 + x)| / |1 + x|")
    axes.set_title("Validity of SAM's first-order gain", fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_landscape(result: LandscapeSlices, path: str | Path) -> Path:
    """The loss slices of :func:`samhess.analysis.landscape.loss_landscape`: the two 1-D slices
    (log loss) beside the 2-D slice's filled contours (levels spaced in log loss).

    Returns:
        The path written.
    """
    if not isinstance(result, LandscapeSlices):
        raise TypeError(f"result must be LandscapeSlices, got {type(result).__name__}")
    figure = Figure(figsize=(10.0, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    lines, plane = figure.subplots(1, 2)
    offsets = np.array(result.offsets, dtype=float)
    if result.along_top_eigenvector is not None:
        label = "top eigenvector v1 (distance)"
        if result.top_eigenvalue is not None:
            label += f", lambda1 = {result.top_eigenvalue:.3g}"
        lines.plot(offsets, _finite(result.along_top_eigenvector), "-", label=label)
    lines.plot(offsets, _finite(result.along_random_direction), "--",
               label="filter-normalized random d1 (filter norms)")
    lines.set_yscale("log")
    lines.set_xlabel("offset from the trained weights")
    lines.set_ylabel("loss")
    lines.legend(fontsize=8)
    surface = np.array([_finite(row) for row in result.plane], dtype=float)
    positive = surface[np.isfinite(surface) & (surface > 0)]
    if positive.size:
        levels = np.geomspace(positive.min(), positive.max(), 13)
        filled = plane.contourf(offsets, offsets, surface, levels=levels,
                                norm=_log_norm(positive), cmap="viridis")
        bar = figure.colorbar(filled, ax=plane, label="loss", ticks=levels[::3])
        bar.ax.set_yticklabels([f"{level:.2g}" for level in levels[::3]])
    plane.plot([0.0], [0.0], "w+", markersize=10)
    plane.set_xlabel("alpha along d1 (filter norms)")
    plane.set_ylabel("beta along d2 (filter norms)")
    plane.set_aspect("equal")
    figure.suptitle("Loss around the trained weights (Li et al., NeurIPS 2018)", fontsize=10)
    return _save(figure, path)


def _log_norm(values: np.ndarray):
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=float(values.min()), vmax=float(values.max()))
