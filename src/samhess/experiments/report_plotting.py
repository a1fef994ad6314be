"""What every report figure shares: matplotlib's default style, figures without pyplot, PNG
bytes without stamps, each optimizer's colour, and the statistics of a seed band.

A curve over training is drawn as the mean over seeds with a band from the lowest to the
highest seed (:func:`seed_band`), at the steps every seed recorded. With three seeds a standard
deviation says little that the extremes do not; the band shows them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samhess.experiments.report_runs import RunFiles, kind_of

__all__ = ["BAND_TEXT", "CURVATURE_UNIT", "Drawn", "SeedBand", "seed_band", "default_style",
           "new_figure", "png_bytes", "colour", "draw_band", "record_value", "log_scale",
           "shared_legend", "plain_log_formatter", "panel_grid", "band_entries"]

#: How captions state the band.
BAND_TEXT = "line: mean over seeds; shaded band: lowest to highest seed"
#: The unit of Hessian eigenvalues and traces (of the mean loss) in axis labels.
CURVATURE_UNIT = "loss / parameter$^2$"


@dataclass
class Drawn:
    """A drawn figure: its PNG, and the numbers it shows (written to plots/figures.json)."""

    png: bytes
    data: dict[str, Any]


@dataclass
class SeedBand:
    """A quantity over training, over seeds: mean, lowest and highest at each common step."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "mean": self.mean, "low": self.low, "high": self.high,
                "seeds": self.seeds}


def record_value(key: str) -> Callable[[dict[str, Any]], float | None]:
    """The record's value of ``key`` (``None`` where absent)."""
    return lambda record: record.get(key)


def seed_band(runs: Sequence[RunFiles],
              value: Callable[[dict[str, Any]], float | None]) -> SeedBand | None:
    """``value(record)`` over training: mean, lowest and highest over ``runs`` at each step
    that every run recorded with a finite value.

    Returns:
        The band, or ``None`` when no step has a value in every run.
    """
    per_run = []
    for run in runs:
        values = {}
        for record in run.records:
            number = value(record)
            if number is not None and np.isfinite(number):
                values[int(record["step"])] = float(number)
        per_run.append(values)
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    if not steps:
        return None
    matrix = np.array([[values[step] for values in per_run] for step in steps])
    return SeedBand(steps=steps, mean=matrix.mean(axis=1).tolist(),
                    low=matrix.min(axis=1).tolist(), high=matrix.max(axis=1).tolist(),
                    seeds=len(per_run))


def default_style():
    """matplotlib's own defaults, whatever the user's matplotlibrc sets, for this block only."""
    import matplotlib

    style = {k: v for k, v in matplotlib.rcParamsDefault.items()
             if not k.startswith("backend") and k not in ("interactive", "webagg.port")}
    style["svg.hashsalt"] = "samhess"
    return matplotlib.rc_context(style)


def new_figure(size: tuple[float, float], ncols: int = 1, nrows: int = 1, *,
               margins: dict[str, float] | None = None, **subplot_options: Any):
    """A figure (no pyplot state) and its axes grid, with fixed margins.

    Fixed margins instead of a layout engine: a third of the drawing time, and the same result
    for these layouts.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    axes = figure.subplots(nrows, ncols, squeeze=False, **subplot_options)
    figure.subplots_adjust(**(margins or {}))
    return figure, axes


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes, without a "Software" stamp: the bytes depend on the data and the
    renderer only."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def colour(name: str) -> str:
    """The kind's colour (:mod:`samhess.experiments.optimizer_kinds`), the same in every plot;
    black for a Tracker run's own optimizer."""
    kind = kind_of(name)
    return "#000000" if kind is None else kind.colour


def draw_band(axis, band: SeedBand, colour_: str, *, linestyle: str = "-",
              linewidth: float = 1.6, marker: str | None = None) -> None:
    """The band's mean as a line, and its lowest-to-highest range shaded (for several seeds)."""
    axis.plot(band.steps, band.mean, color=colour_, linestyle=linestyle, linewidth=linewidth,
              marker=marker, markersize=3)
    if band.seeds > 1:
        axis.fill_between(band.steps, band.low, band.high, color=colour_, alpha=0.18,
                          linewidth=0)


def plain_log_formatter(minor: bool = False):
    """Tick labels of a log axis as plain numbers (``0.01``, ``2``), where matplotlib would label
    them (decades; in-between ticks when the axis spans less than a decade or so)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=not minor)


def log_scale(axis, which: str = "y") -> None:
    """A log axis labelled with plain numbers."""
    target = axis.yaxis if which == "y" else axis.xaxis
    (axis.set_yscale if which == "y" else axis.set_xscale)("log")
    target.set_major_formatter(plain_log_formatter())
    target.set_minor_formatter(plain_log_formatter(minor=True))


def shared_legend(figure, handles: list, labels: list[str], *, top: float = 0.995,
                  columns: int = 5) -> None:
    """One legend for the whole figure, centred above the panels, at most ``columns`` entries
    a row."""
    figure.legend(handles, labels, loc="upper center", ncol=min(len(handles), columns),
                  bbox_to_anchor=(0.5, top), frameon=False, fontsize=9)


def panel_grid(count: int) -> tuple[int, int]:
    """Columns and rows for ``count`` panels: two a row up to four, three beyond."""
    columns = min(count, 2) if count <= 4 else 3
    return columns, -(-count // columns)


def band_entries(seeds: int) -> list[tuple[Any, str]]:
    """The legend entry of a seed band, as ``(handle, label)``; none for a single seed."""
    from matplotlib.patches import Patch

    if seeds < 2:
        return []
    return [(Patch(facecolor="#777777", alpha=0.3, edgecolor="none"), "lowest to highest seed")]
