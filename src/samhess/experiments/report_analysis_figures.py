"""The report's figures of the final models (``analysis/analysis.json``), every seed drawn.

* ``gains.png``: the final step's gain along each top eigenvector against its eigenvalue, one
  panel per optimizer (each final model has its own eigenvalues); a marker shape per seed,
  filled for the measured gain, hollow for the prediction where it is one value per eigenvector
  (IRE, ASAM), a dashed line per seed where it is a function of the eigenvalue (SGD, SAM, USAM);
* ``taylor.png``: the relative error of SAM's first-order gradient expansion against rho, a line
  per seed;
* ``spectrum.png``: the final Hessian spectral density, one panel per optimizer (shared axes),
  a line per seed;
* ``landscape.png``: the loss along the top eigenvector and along a filter-normalized random
  direction (mean and range over seeds), and over the plane of two random directions (mean over
  seeds, shared contour levels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samhess.experiments.report_plotting import (
    CURVATURE_UNIT, Drawn, band_entries, colour, log_scale, new_figure, panel_grid, png_bytes,
    shared_legend,
)
from samhess.experiments.report_runs import RunFiles, label

__all__ = ["plot_gains", "plot_taylor", "plot_spectrum", "plot_landscape", "SEED_MARKERS"]

Groups = dict[str, list[RunFiles]]

#: A marker shape per seed (in seed order), the same in every analysis figure.
SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _analysed(runs: list[RunFiles], key: str) -> list[tuple[RunFiles, dict[str, Any]]]:
    """The runs whose analysis holds ``key``, with it."""
    out = []
    for run in runs:
        value = (run.analysis or {}).get(key)
        if value:
            out.append((run, value))
    return out


def _analysed_groups(groups: Groups, key: str) -> dict[str, list[tuple[RunFiles, Any]]]:
    """:func:`_analysed` of every optimizer that has any."""
    found = {name: _analysed(runs, key) for name, runs in groups.items()}
    return {name: items for name, items in found.items() if items}


def _marker(index: int) -> str:
    return SEED_MARKERS[index % len(SEED_MARKERS)]


def _floats(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _seed_legend(figure, seeds: list[int], extra: list[tuple[Any, str]], top: float) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="#444444", marker=_marker(i), linestyle="none")
               for i in range(len(seeds))]
    labels = [f"seed {seed}" for seed in seeds]
    for handle, text in extra:
        handles.append(handle)
        labels.append(text)
    shared_legend(figure, handles, labels, top=top, columns=max(len(seeds), 3))


#: The smallest span of a gain axis: gains that agree to rounding (SGD's, all 1) are shown on
#: a readable axis rather than magnified to their last digits.
_MIN_GAIN_SPAN = 0.2


def _at_least_span(axis, span: float) -> None:
    low, high = axis.get_ylim()
    if high - low < span:
        middle = (low + high) / 2
        axis.set_ylim(middle - span / 2, middle + span / 2)


def plot_gains(groups: Groups) -> Drawn | None:
    """The final step's gain along the top eigenvectors against their eigenvalues, per
    optimizer and seed, with the first-order predictions."""
    from matplotlib.lines import Line2D

    analysed = _analysed_groups(groups, "gains")
    if not analysed:
        return None
    columns, rows = panel_grid(len(analysed))
    height = 3.4 * rows + 1.25
    figure, axes = new_figure((10.0, height), columns, rows, margins=dict(
        left=0.08, right=0.98, bottom=0.65 / height, top=1.0 - 1.2 / height, wspace=0.2,
        hspace=0.38))
    data: dict[str, Any] = {}
    seeds = sorted({run.seed for items in analysed.values() for run, _ in items})
    for axis, (name, items) in zip(axes.flat, analysed.items()):
        tint = colour(name)
        for run, gains in items:
            marker = _marker(seeds.index(run.seed))
            eigenvalues = _floats(gains["eigenvalues"])
            measured = _floats(gains["gains"])
            axis.scatter(eigenvalues, measured, color=tint, marker=marker, s=26, zorder=3)
            flat = ((run.analysis or {}).get("sharp_flat") or {}).get("flat_gain")
            if flat is not None:
                axis.scatter([0.0], [flat], facecolors="none", edgecolors=tint, marker=marker,
                             s=70, linewidths=1.4, zorder=3)
            predictions = gains.get("predictions")
            entry = {"eigenvalues": eigenvalues.tolist(), "gains": measured.tolist(),
                     "flat_gain": flat, "predictions": predictions}
            data.setdefault(name, {})[f"seed {run.seed}"] = entry
            if predictions and all(p is not None for p in predictions):
                predicted = _floats(predictions)
                if (gains.get("predictions_linear_in_eigenvalue")
                        and np.unique(eigenvalues).size >= 2):
                    # a + c lambda (a = 1 but for GSAM): the line through the predictions,
                    # drawn from lambda = 0, where it meets the flat subspace's gain
                    slope, intercept = np.polyfit(eigenvalues, predicted, 1)
                    xs = np.array([0.0, float(eigenvalues.max())])
                    axis.plot(xs, intercept + slope * xs, color=tint, linestyle="--",
                              linewidth=1.0, alpha=0.8)
                else:  # one prediction per eigenvector (IRE's mask, ASAM's scaling)
                    axis.scatter(eigenvalues, predicted, facecolors="none", edgecolors=tint,
                                 marker=marker, s=80, linewidths=1.0, zorder=4)
        axis.axhline(1.0, color="#444444", linewidth=0.8, linestyle=":")
        _at_least_span(axis, _MIN_GAIN_SPAN)
        axis.set_title(f"{label(name)}: final step along its own top eigenvectors", fontsize=9)
        axis.set_xlabel(f"Hessian eigenvalue ({CURVATURE_UNIT})")
        axis.set_ylabel("gain <v, D> / <v, -lr g>")
        axis.grid(True, alpha=0.3)
    for axis in axes.flat[len(analysed):]:
        axis.set_axis_off()
    extra = [
        (Line2D([], [], color="#444444", marker="o", linestyle="none"), "measured"),
        (Line2D([], [], color="#444444", marker="o", markerfacecolor="none", markersize=9,
                linestyle="none"), "predicted (one per eigenvector)"),
        (Line2D([], [], color="#444444", linestyle="--"), "predicted (linear in the eigenvalue)"),
        (Line2D([], [], color="#444444", marker="o", markerfacecolor="none", markersize=11,
                linestyle="none"), "at 0: measured on the flat subspace"),
    ]
    _seed_legend(figure, seeds, extra, top=1.0 - 0.05 / height)
    return Drawn(png_bytes(figure), data)


def plot_taylor(groups: Groups) -> Drawn | None:
    """Relative error of the first-order gradient expansion against rho (log-log), a line per
    seed, labelled with the fitted slopes."""
    figure, axes = new_figure((8.0, 4.8), margins=dict(left=0.1, right=0.98, bottom=0.12,
                                                       top=0.9))
    axis = axes[0, 0]
    data: dict[str, Any] = {}
    for name, runs in groups.items():
        items = _analysed(runs, "taylor")
        slopes = []
        for index, (run, taylor) in enumerate(items):
            rhos = _floats(taylor["rhos"])
            errors = _floats(taylor["grad_rel_error"])
            axis.plot(rhos, errors, color=colour(name), marker=_marker(index), markersize=4,
                      linewidth=1.0, label=None)
            slopes.append(taylor.get("order"))
            data.setdefault(name, {})[f"seed {run.seed}"] = {
                "rhos": rhos.tolist(), "grad_rel_error": errors.tolist(),
                "order": taylor.get("order")}
        if items:
            text = ", ".join("n/a" if s is None else f"{s:.2f}" for s in slopes)
            axis.plot([], [], color=colour(name), label=f"{label(name)} (slopes {text})")
    if not data:
        return None
    log_scale(axis, "x")
    log_scale(axis, "y")
    axis.set_xlabel("perturbation radius rho (parameter distance)")
    axis.set_ylabel("relative error of g + H e")
    axis.set_title("gradient at w + e against its first-order prediction, every seed "
                   "(markers: seeds)", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    return Drawn(png_bytes(figure), data)


def plot_spectrum(groups: Groups) -> Drawn | None:
    """The final Hessian spectral density, one panel per optimizer, a line per seed."""
    analysed = _analysed_groups(groups, "spectral_density")
    if not analysed:
        return None
    columns, rows = panel_grid(len(analysed))
    height = 3.0 * rows + 0.5
    figure, axes = new_figure((10.0, height), columns, rows, sharex=True, sharey=True,
                              margins=dict(left=0.08, right=0.98, bottom=0.65 / height,
                                           top=1.0 - 0.35 / height, wspace=0.1, hspace=0.32))
    data: dict[str, Any] = {}
    for axis, (name, items) in zip(axes.flat, analysed.items()):
        for index, (run, density) in enumerate(items):
            grid = _floats(density["grid"])
            values = np.maximum(_floats(density["density"]), 1e-12)
            axis.plot(grid, values, color=colour(name), linewidth=1.1,
                      linestyle=("-", "--", ":", "-.")[index % 4], label=f"seed {run.seed}")
            data.setdefault(name, {})[f"seed {run.seed}"] = {"sigma": density.get("sigma")}
        log_scale(axis)
        axis.set_ylim(bottom=1e-6)
        axis.set_title(f"{label(name)}: final Hessian spectral density", fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes.flat[len(analysed):]:
        axis.set_axis_off()
    for axis in axes[-1, :]:
        axis.set_xlabel(f"eigenvalue ({CURVATURE_UNIT})")
    for axis in axes[:, 0]:
        axis.set_ylabel("density (log scale)")
    return Drawn(png_bytes(figure), data)


def _slice_band(items: list[dict[str, Any]], key: str) -> dict[str, list[float]] | None:
    rows = [item[key] for item in items if item.get(key)]
    if not rows or len({len(row) for row in rows}) != 1:
        return None
    matrix = _floats([v for row in rows for v in row]).reshape(len(rows), -1)
    return {"mean": matrix.mean(axis=0).tolist(), "low": matrix.min(axis=0).tolist(),
            "high": matrix.max(axis=0).tolist(), "seeds": len(rows)}


def plot_landscape(groups: Groups) -> Drawn | None:
    """Loss slices of the final models: two 1-D slices (mean and range over seeds, every
    optimizer on the same axes) and a 2-D slice per optimizer (mean over seeds, shared
    levels)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec
    from matplotlib.lines import Line2D

    analysed = {name: [item for _, item in items]
                for name, items in _analysed_groups(groups, "landscape").items()}
    offsets = {tuple(item["offsets"]) for items in analysed.values() for item in items}
    if not analysed or len(offsets) != 1:
        return None
    offsets = np.asarray(next(iter(offsets)), dtype=float)
    count = len(analysed)
    columns = max(count, 2)
    plane_width = 10.0 * 0.84 / columns
    height = 4.3 + plane_width
    figure = Figure(figsize=(10.0, height), dpi=100)
    grid = GridSpec(2, 2 * columns, figure=figure, left=0.08, right=0.9,
                    bottom=0.55 / height, top=1.0 - 0.65 / height, hspace=0.45, wspace=0.9,
                    height_ratios=(3.1, plane_width))
    along_eigen = figure.add_subplot(grid[0, :columns])
    along_random = figure.add_subplot(grid[0, columns:], sharey=along_eigen)
    data: dict[str, Any] = {"offsets": offsets.tolist()}
    for name, items in analysed.items():
        for axis, key in ((along_eigen, "along_top_eigenvector"),
                          (along_random, "along_random_direction")):
            band = _slice_band(items, key)
            if band is None:
                continue
            data.setdefault(name, {})[key] = band
            axis.plot(offsets, band["mean"], color=colour(name), linewidth=1.6)
            if band["seeds"] > 1:
                axis.fill_between(offsets, band["low"], band["high"], color=colour(name),
                                  alpha=0.18, linewidth=0)
    along_eigen.set_xlabel("distance along the top eigenvector $v_1$ (parameter norm)")
    along_random.set_xlabel("step along a random direction $d_1$ (filter norms)")
    along_eigen.set_ylabel("loss on the tracking batch, log scale")
    for axis, title in ((along_eigen, "along the top Hessian eigenvector"),
                        (along_random, "along a filter-normalized random direction")):
        log_scale(axis)
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
    planes = {name: np.nanmean(np.asarray([_floats([v for row in item["plane"] for v in row])
                                           .reshape(len(offsets), len(offsets))
                                           for item in items]), axis=0)
              for name, items in analysed.items()}
    positive = np.concatenate([p[np.isfinite(p) & (p > 0)] for p in planes.values()])
    if not positive.size:
        return None
    levels = np.geomspace(positive.min(), positive.max(), 13)
    norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    width = 2 * columns // count
    filled = None
    for index, (name, plane) in enumerate(planes.items()):
        axis = figure.add_subplot(grid[1, index * width:(index + 1) * width])
        filled = axis.contourf(offsets, offsets, plane, levels=levels, norm=norm,
                               cmap="viridis")
        axis.plot([0.0], [0.0], marker="+", color="white", markersize=9)
        axis.set_aspect("equal")
        seeds = len(analysed[name])
        what = "one seed" if seeds == 1 else f"mean of {seeds} seeds"
        axis.set_title(f"{label(name)}: {what}", fontsize=9)
        axis.set_xlabel("$\\alpha$ along $d_1$ (filter norms)", fontsize=8)
        if index == 0:
            axis.set_ylabel("$\\beta$ along $d_2$", fontsize=8)
        axis.tick_params(labelsize=7)
        data.setdefault(name, {})["plane_mean"] = plane.tolist()
    last = figure.axes[-1].get_position()
    cax = figure.add_axes([0.915, last.y0, 0.013, last.height])
    bar = figure.colorbar(filled, cax=cax, ticks=levels[::3])
    bar.ax.set_yticklabels([f"{level:.2g}" for level in levels[::3]], fontsize=7)
    bar.set_label("loss", fontsize=8)
    handles = [Line2D([], [], color=colour(name), linewidth=2.0) for name in analysed]
    labels = [label(name) for name in analysed]
    for handle, text in band_entries(max(len(items) for items in analysed.values())):
        handles.append(handle)
        labels.append(text)
    shared_legend(figure, handles, labels, top=1.0 - 0.05 / height)
    return Drawn(png_bytes(figure), data)
