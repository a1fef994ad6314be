"""The report's figures over training, from the records of every seed.

* ``curves.png``: train and test loss, test error, lambda_max with the edge of stability of each
  optimizer's step (:mod:`samhess.experiments.stability`), and Tr(H);
* ``dynamics.png``: the quantities the claims are about: the sharp/flat gain ratio against a
  gradient step and against the IRE kind's base step, the share of ``||g||^2`` in the top-k
  eigenspace (how much of the gradient the sharp directions hold at all), and ``||g||``;
* ``eigenvalues.png``: the top-k Hessian eigenvalues, one panel per optimizer;
* ``layers.png``: lambda_max and Tr(H) of each layer's Hessian block over training, as heat maps
  (mean over seeds).

Every curve is the mean over seeds with the band from the lowest to the highest seed
(:func:`samhess.experiments.report_plotting.seed_band`); each figure function returns the PNG and
the numbers it drew.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samhess.experiments.report_plotting import (
    CURVATURE_UNIT, Drawn, SeedBand, band_entries, colour, draw_band, log_scale, new_figure,
    panel_grid, plain_log_formatter, png_bytes, record_value, seed_band, shared_legend,
)
from samhess.experiments.report_runs import RunFiles, kind_of, label
from samhess.experiments.stability import StabilityEdge, stability_threshold

__all__ = ["plot_curves", "plot_dynamics", "plot_eigenvalues", "plot_layers", "loss_unit",
           "edge_band"]

Groups = dict[str, list[RunFiles]]

_STEP_LABEL = "optimizer step"


def loss_unit(groups: Groups) -> str:
    """The loss's name and unit: cross-entropy in nats for classification and language models
    (whose records hold an accuracy), mean squared error otherwise."""
    classified = any(r.get("test_accuracy") is not None
                     for runs in groups.values() for run in runs for r in run.records)
    return "cross-entropy (nats)" if classified else "mean squared error"


def _most_seeds(groups: Groups) -> int:
    return max(len(runs) for runs in groups.values())


def _legend(figure, groups: Groups, extra: list[tuple[Any, str]] = (), *, top: float = 0.995,
            columns: int = 4):
    """One legend for the whole figure, above the panels: a line per optimizer, then the
    styles that mean the same thing in every panel."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour(name), linewidth=2.0) for name in groups]
    labels = [label(name) for name in groups]
    for handle, text in extra:
        handles.append(handle)
        labels.append(text)
    shared_legend(figure, handles, labels, top=top, columns=columns)


def _banded(axis, store: dict[str, Any], key: str, runs: list[RunFiles], value,
            **style: Any) -> SeedBand | None:
    """The seed band of ``value(record)`` over ``runs``, recorded as ``store[key]`` and drawn on
    ``axis`` in the runs' optimizer's colour; ``None`` when no step has it in every run."""
    band = seed_band(runs, value)
    if band is not None:
        store[key] = band.to_dict()
        draw_band(axis, band, colour(runs[0].optimizer), **style)
    return band


def edge_band(runs: list[RunFiles]) -> tuple[str, SeedBand] | None:
    """The edge of stability of the runs' optimizer over training (mean and range over seeds),
    with its formula; ``None`` when the kind has no known edge."""
    kind = kind_of(runs[0].optimizer)
    edge = None if kind is None else kind.stability_edge
    if edge is None:
        return None
    config = runs[0].config
    momentum = float(config.get("momentum") or 0.0)
    weight_decay = float(config.get("weight_decay") or 0.0)

    def threshold(record: dict[str, Any]) -> float | None:
        return stability_threshold(edge, float(config["lr"]), float(config.get("rho") or 0.0),
                                   record.get("grad_norm"), momentum, weight_decay)

    band = seed_band(runs, threshold)
    return (None if band is None else (edge.value, band))


#: The legend of the edges drawn as curves (dotted, in the optimizer's colour).
_EDGE_LEGEND = {
    StabilityEdge.SAM: "SAM's edge: lr λ (1 + ρ λ / ||g||) = 2",
    StabilityEdge.USAM: "USAM's edge: lr λ (1 + ρ λ) = 2",
}
#: A reference line further above the data than this factor (times the data's top) is named at
#: the top of the panel instead of stretching its axis.
_REFERENCE_REACH = 2.0


def _gradient_edges(axis, edges: list[float], bands: dict[str, dict[str, Any]]) -> None:
    """Gradient descent's edges (2/lr) as dashed lines; one far above the curves is named at the
    panel's top edge rather than drawn, so that the curves keep the axis."""
    top = max((max(band["high"]) for band in bands.values()), default=None)
    far = []
    for edge in edges:
        if top is not None and edge > _REFERENCE_REACH * top:
            far.append(edge)
            continue
        axis.axhline(edge, color="#555555", linestyle="--", linewidth=1.0)
        axis.annotate(f"2/lr = {edge:.3g}", (1.0, edge), xycoords=("axes fraction", "data"),
                      ha="right", va="bottom", fontsize=8, color="#555555")
    if far:
        text = ", ".join(f"{edge:.3g}" for edge in far)
        axis.annotate(f"2/lr = {text}: above this axis", (0.99, 0.98),
                      xycoords="axes fraction", ha="right", va="top", fontsize=8,
                      color="#555555")


def plot_curves(groups: Groups) -> Drawn:
    """Losses, test error, lambda_max with each optimizer's edge of stability, and Tr(H)."""
    from matplotlib.lines import Line2D

    figure, axes = new_figure((10.0, 7.8), 2, 2, margins=dict(
        left=0.08, right=0.98, bottom=0.07, top=0.86, wspace=0.25, hspace=0.34))
    data: dict[str, Any] = {}
    loss_axis, error_axis, sharp_axis, trace_axis = axes.flat
    has_accuracy = any(r.get("test_accuracy") is not None
                       for runs in groups.values() for run in runs for r in run.records)
    gradient_edges: list[float] = []

    def panel(key: str) -> dict[str, Any]:
        return data.setdefault(key, {})

    for name, runs in groups.items():
        tint = colour(name)
        _banded(loss_axis, panel("train_loss"), name, runs, record_value("train_loss"))
        _banded(loss_axis, panel("test_loss"), name, runs, record_value("test_loss"),
                linestyle="--", linewidth=1.1)
        if has_accuracy:
            _banded(error_axis, panel("test_error_percent"), name, runs,
                    lambda r: None if r.get("test_accuracy") is None
                    else 100.0 * (1.0 - r["test_accuracy"]))
        _banded(sharp_axis, panel("lambda_max"), name, runs, record_value("lambda_max"))
        edge = edge_band(runs)
        if edge is not None:
            formula, band = edge
            data.setdefault("stability_edge", {})[name] = {"edge": formula, **band.to_dict()}
            if formula == StabilityEdge.GRADIENT_DESCENT.value:
                if band.mean[0] not in gradient_edges:  # one line per distinct 2/lr
                    gradient_edges.append(band.mean[0])
            else:
                sharp_axis.plot(band.steps, band.mean, color=tint, linestyle=":",
                                linewidth=1.3)
        _banded(trace_axis, panel("hessian_trace"), name, runs, record_value("hessian_trace"))
    _gradient_edges(sharp_axis, gradient_edges, data.get("lambda_max", {}))
    loss = loss_unit(groups)
    log_scale(loss_axis)
    loss_axis.set_ylabel(f"{loss}, log scale")
    loss_axis.set_title("train loss (solid) and test loss (dashed)", fontsize=10)
    if has_accuracy:
        log_scale(error_axis)
        error_axis.set_ylabel("test error (%), log scale")
        error_axis.set_title("test error = 100% - test accuracy", fontsize=10)
    else:
        error_axis.text(0.5, 0.5, "no accuracy: a regression task", ha="center",
                        va="center", transform=error_axis.transAxes)
        error_axis.set_axis_off()
    sharp_axis.set_ylabel(f"$\\lambda_{{\\max}}$ ({CURVATURE_UNIT})")
    sharp_axis.set_title("top Hessian eigenvalue, with the edge of stability", fontsize=10)
    trace_axis.set_ylabel(f"Tr(H) ({CURVATURE_UNIT})")
    trace_axis.set_title("Hessian trace (Hutch++)", fontsize=10)
    for axis in axes.flat:
        axis.set_xlabel(_STEP_LABEL)
        axis.grid(True, alpha=0.3)
    extra = band_entries(_most_seeds(groups))
    edges = {value["edge"] for value in data.get("stability_edge", {}).values()}
    if StabilityEdge.GRADIENT_DESCENT.value in edges:
        extra.append((Line2D([], [], color="#555555", linestyle="--"),
                      "2/lr (gradient descent's edge)"))
    for edge, text in _EDGE_LEGEND.items():
        if edge.value in edges:
            extra.append((Line2D([], [], color="#555555", linestyle=":"), text))
    _legend(figure, groups, extra)
    return Drawn(png_bytes(figure), data)


def plot_dynamics(groups: Groups) -> Drawn:
    """The sharp/flat gain ratios, the sharp share of ||g||^2 and ||g|| over training."""
    figure, axes = new_figure((10.0, 7.6), 2, 2, margins=dict(
        left=0.08, right=0.98, bottom=0.07, top=0.88, wspace=0.25, hspace=0.34))
    data: dict[str, Any] = {}
    panels = (
        (axes[0, 0], "gain_ratio", "sharp/flat gain ratio against a gradient step",
         "sharp gain / flat gain", False),
        (axes[0, 1], "gain_ratio_vs_base", "sharp/flat gain ratio against the base's step "
         "(IRE kinds)", "sharp gain / flat gain", False),
        (axes[1, 0], "sharp_gradient_share", "share of $\\|g\\|^2$ in the top-k eigenspace",
         "$\\sum_i \\langle \\hat g, v_i\\rangle^2$, log scale", True),
        (axes[1, 1], "grad_norm", "gradient norm on the tracking batch",
         "$\\|g\\|$ (loss / parameter), log scale", True),
    )
    for axis, key, title, ylabel, logarithmic in panels:
        store: dict[str, Any] = {}
        drawn = [_banded(axis, store, name, runs, record_value(key))
                 for name, runs in groups.items()]
        if store:
            data[key] = store
        if not any(drawn):
            axis.text(0.5, 0.5, "no IRE kind in this report" if key == "gain_ratio_vs_base"
                      else "not recorded", ha="center", va="center", transform=axis.transAxes)
            axis.set_axis_off()
            continue
        if key.startswith("gain_ratio"):
            axis.axhline(1.0, color="#444444", linestyle=":", linewidth=1.0)
        if logarithmic:
            log_scale(axis)
        axis.set_title(title, fontsize=10)
        axis.set_ylabel(ylabel)
        axis.set_xlabel(_STEP_LABEL)
        axis.grid(True, alpha=0.3)
    _legend(figure, groups, band_entries(_most_seeds(groups)))
    return Drawn(png_bytes(figure), data)


def plot_eigenvalues(groups: Groups) -> Drawn | None:
    """The top-k Hessian eigenvalues over training, one panel per optimizer (shared axes)."""
    from matplotlib.lines import Line2D

    counts = [len(r.get("eigenvalues") or []) for runs in groups.values() for run in runs
              for r in run.records]
    k = min(counts) if counts else 0
    if k == 0:
        return None
    columns, rows = panel_grid(len(groups))
    figure, axes = new_figure((10.0, 3.3 * rows + 0.8), columns, rows, sharex=True,
                              sharey=True, margins=dict(left=0.08, right=0.98, bottom=0.09,
                                                        top=1.0 - 0.95 / (3.3 * rows + 0.8),
                                                        wspace=0.12, hspace=0.3))
    styles = ["-", "--", ":", "-."]
    data: dict[str, Any] = {}
    for axis, (name, runs) in zip(axes.flat, groups.items()):
        for index in range(k):
            _banded(axis, data.setdefault(name, {}), f"lambda_{index + 1}", runs,
                    lambda r, i=index: (r.get("eigenvalues") or [None] * k)[i],
                    linestyle=styles[index % len(styles)], linewidth=1.4)
        axis.set_title(label(name), fontsize=10)
        axis.grid(True, alpha=0.3)
    for axis in axes.flat[len(groups):]:
        axis.set_axis_off()
    for axis in axes[:, 0]:
        axis.set_ylabel(f"eigenvalue ({CURVATURE_UNIT})")
    for axis in axes[-1, :]:
        axis.set_xlabel(_STEP_LABEL)
    extra = [(Line2D([], [], color="#555555", linestyle=styles[i % len(styles)]),
              f"$\\lambda_{i + 1}$") for i in range(k)]
    extra += band_entries(_most_seeds(groups))
    _legend(figure, groups, extra)
    return Drawn(png_bytes(figure), data)


def layer_table(runs: list[RunFiles]) -> tuple[list[int], list[dict[str, Any]], dict] | None:
    """The per-layer records of ``runs`` at the steps every seed measured them: the steps, the
    blocks (of the first run) and, per quantity, a ``(seeds, steps, blocks)`` array."""
    per_run = []
    for run in runs:
        measured = {int(r["step"]): r["layer_curvature"] for r in run.records
                    if r.get("layer_curvature")}
        per_run.append(measured)
    if not per_run or not all(per_run):
        return None
    steps = sorted(set.intersection(*(set(m) for m in per_run)))
    if not steps:
        return None
    blocks = per_run[0][steps[0]]
    names = [block["block"] for block in blocks]
    values = {}
    for key in ("lambda_max", "hessian_trace"):
        array = np.full((len(per_run), len(steps), len(names)), np.nan)
        for i, measured in enumerate(per_run):
            for j, step in enumerate(steps):
                for entry in measured[step]:
                    if entry["block"] in names and entry.get(key) is not None:
                        array[i, j, names.index(entry["block"])] = entry[key]
        values[key] = array
    return steps, blocks, values


def block_label(block: dict[str, Any]) -> str:
    """``layers.1 (Linear, 4,160)``."""
    return f"{block['block'] or 'model'} ({block['module']}, {block['parameters']:,})"


def plot_layers(groups: Groups) -> Drawn | None:
    """Per-layer lambda_max and Tr(H) over training as heat maps, one column per optimizer,
    mean over seeds (colours on a log scale shared by the optimizers)."""
    from matplotlib.colors import LogNorm

    tables = {name: layer_table(runs) for name, runs in groups.items()}
    tables = {name: table for name, table in tables.items() if table is not None}
    if not tables:
        return None
    quantities = (("lambda_max", "$\\lambda_{\\max}$ of each layer's block"),
                  ("hessian_trace", "Tr(H) of each layer's block"))
    blocks = max(len(table[1]) for table in tables.values())
    panel = max(1.5, 0.3 * blocks + 0.7)
    height = 1.6 + 2 * panel
    figure, axes = new_figure((10.0, height), len(tables), 2, margins=dict(
        left=0.21, right=0.88, bottom=0.55 / height, top=1.0 - 0.6 / height, wspace=0.06,
        hspace=0.9 / panel))
    data: dict[str, Any] = {}
    for row, (key, title) in enumerate(quantities):
        means = {name: np.nanmean(table[2][key], axis=0) for name, table in tables.items()}
        positive = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in means.values()])
        norm = (LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
                if positive.size else None)
        image = None
        for column, (name, (steps, block_list, _)) in enumerate(tables.items()):
            axis = axes[row, column]
            mean = means[name]
            shown = np.where(mean > 0, mean, np.nan)
            image = axis.imshow(shown.T, aspect="auto", norm=norm, cmap="viridis",
                                interpolation="nearest", origin="upper",
                                extent=(-0.5, len(steps) - 0.5, len(block_list) - 0.5, -0.5))
            every = max(1, -(-len(steps) // 6))
            axis.set_xticks(range(0, len(steps), every))
            axis.set_xticklabels([str(s) for s in steps[::every]], fontsize=7)
            axis.set_yticks(range(len(block_list)))
            axis.set_yticklabels([block_label(b) for b in block_list] if column == 0 else [],
                                 fontsize=8)
            axis.set_title(label(name), fontsize=9)
            if row == 1:
                axis.set_xlabel(_STEP_LABEL, fontsize=8)
            data.setdefault(name, {"steps": steps,
                                   "blocks": [b["block"] for b in block_list]})[key] = (
                mean.tolist())
        first, last = axes[row, 0].get_position(), axes[row, -1].get_position()
        figure.text((first.x0 + last.x1) / 2, last.y1 + 0.25 / height, title, ha="center",
                    va="bottom", fontsize=10)
        if image is not None:
            cax = figure.add_axes([0.9, last.y0, 0.015, last.height])
            bar = figure.colorbar(image, cax=cax)
            bar.set_label(CURVATURE_UNIT, fontsize=8)
            bar.ax.yaxis.set_major_formatter(plain_log_formatter())
            bar.ax.yaxis.set_minor_formatter(plain_log_formatter(minor=True))
            bar.ax.tick_params(labelsize=7, which="both")
    return Drawn(png_bytes(figure), data)
