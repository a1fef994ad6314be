r"""``edge-of-stability``: GD's sharpness settles at 2/eta, SAM's at its own edge.

Gradient descent with learning rate :math:`\eta` is stable along a direction of curvature
:math:`\lambda` only while :math:`\eta\lambda < 2`. Cohen et al. (ICLR 2021) observed that full-
batch GD trained from initialization sharpens until :math:`\lambda_{\max}` reaches
:math:`2/\eta` and then hovers there (the edge of stability) while the loss keeps falling,
non-monotonically. For SAM with radius :math:`\rho`, Long & Bartlett (2024) derive the edge
from the step along the top eigenvector: the gradient at the perturbed point has the component
:math:`\lambda x (1 + \rho\lambda/\lVert g\rVert)`, so the step is stable while

.. math::

    \eta\lambda\Bigl(1 + \frac{\rho\lambda}{\lVert g\rVert}\Bigr) < 2,

an edge that depends on the gradient's norm and lies below GD's.

For each learning rate, a GD and a full-batch SAM trajectory from the seeded initialization,
recording :math:`\lambda_{\max}` and :math:`\lVert g\rVert` every ``record_every`` steps. Over
the settled second half of the steps the report gives the median of :math:`\eta\lambda/2` (GD)
and of :math:`\eta\lambda(1 + \rho\lambda/\lVert g\rVert)/2` (SAM): 1 at the edge.

References:
    J. Cohen, S. Kaur, Y. Li, J. Z. Kolter, A. Talwalkar. Gradient Descent on Neural Networks
    Typically Occurs at the Edge of Stability. ICLR 2021.

    P. M. Long, P. L. Bartlett. Sharpness-Aware Minimization and the Edge of Stability. JMLR
    25(179), 2024.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.report_claims import Claim, fmt
from samhess.experiments.report_pages import Image
from samhess.experiments.trajectories.arms import Arm, StartPoint
from samhess.experiments.trajectories.experiment import (
    ExperimentConfig, Findings, Records,
)
from samhess.experiments.trajectories.measures import SharpnessMeasure
from samhess.experiments.trajectories.pages import draw_png

__all__ = ["arms", "findings", "EdgeMeasurement", "gd_stability", "sam_stability",
           "edge_claims", "SETTLED_FRACTION", "EDGE_TOLERANCE"]

#: The statistics are taken over the records after this fraction of the run.
SETTLED_FRACTION = 0.5
#: "At the edge": the median stability quantity over 2 is within this of 1.
EDGE_TOLERANCE = 0.1


def gd_stability(lr: float, top: float) -> float:
    r""":math:`\eta\lambda/2`: GD's stability quantity over its edge."""
    return lr * top / 2


def sam_stability(lr: float, rho: float, top: float, grad_norm: float) -> float:
    r""":math:`\eta\lambda(1 + \rho\lambda/\lVert g\rVert)/2`: SAM's over its edge."""
    return lr * top * (1 + rho * top / grad_norm) / 2


@dataclass(frozen=True)
class EdgeMeasurement:
    """The settled medians of one learning rate's two trajectories.

    Attributes:
        lr: the learning rate.
        gd: GD's median :math:`\\eta\\lambda/2`.
        sam: SAM's median :math:`\\eta\\lambda(1 + \\rho\\lambda/\\lVert g\\rVert)/2`.
        gd_top: GD's median lambda_max.
        sam_top: SAM's median lambda_max.
    """

    lr: float
    gd: float | None
    sam: float | None
    gd_top: float | None
    sam_top: float | None


def edge_claims(measurements: Sequence[EdgeMeasurement], *,
                tolerance: float = EDGE_TOLERANCE) -> list[Claim]:
    """Two verdicts per learning rate: GD at 2/eta, SAM at its edge."""
    def at_edge(value: float | None) -> bool | None:
        return None if value is None else abs(value - 1) <= tolerance

    def text(value: float | None, top: float | None, edge: str) -> str:
        if value is None or top is None:
            return "Not measured"
        return f"The median of {edge} is {value:.3f} (median lambda_max {top:.3f})"

    claims = []
    for m in measurements:
        claims.append(Claim(
            f"at lr {m.lr:g}, GD's lambda_max settles at 2/eta = {2 / m.lr:.3g} "
            f"(median eta lambda / 2 within {tolerance:.0%} of 1)", at_edge(m.gd),
            text(m.gd, m.gd_top, "eta lambda / 2")))
        claims.append(Claim(
            f"at lr {m.lr:g}, SAM settles at its edge eta lambda (1 + rho lambda / ||g||) = 2 "
            f"(median within {tolerance:.0%})", at_edge(m.sam),
            text(m.sam, m.sam_top, "eta lambda (1 + rho lambda / ||g||) / 2")))
    return claims


def _name(kind: str, lr: float) -> str:
    return f"{kind}-lr{lr:g}"


def arms(config: ExperimentConfig) -> tuple[Arm, ...]:
    out = []
    common = {"batch_size": config["examples"], "steps": config["steps"],
              "record_every": config["record_every"], "start": StartPoint.INITIALIZATION,
              "measure": SharpnessMeasure}
    for lr in config["lrs"]:
        out.append(Arm(_name("gd", lr), f"GD, lr {lr:g}", optimizer_kind("sgd").colour, "sgd",
                       {"lr": lr}, **common))
        out.append(Arm(_name("sam", lr), f"SAM, lr {lr:g}", optimizer_kind("sam").colour, "sam",
                       {"lr": lr, "rho": config["rho"]}, **common))
    return tuple(out)


def _settled(records: Sequence[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    return [r for r in records if r["step"] >= SETTLED_FRACTION * steps]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def findings(config: ExperimentConfig, records: Records) -> Findings:
    rho, steps = config["rho"], config["steps"]
    measurements, summary = [], {}
    table = [["lr", "2/eta", "GD median lambda_max", "GD eta lambda / 2",
              "SAM median lambda_max", "SAM median ||g||", "SAM eta lambda (1 + rho lambda/||g||)"
              " / 2"]]
    for lr in config["lrs"]:
        gd = _settled(records[_name("gd", lr)], steps)
        sam = _settled(records[_name("sam", lr)], steps)
        measurement = EdgeMeasurement(
            lr, _median([gd_stability(lr, r["lambda_max"]) for r in gd]),
            _median([sam_stability(lr, rho, r["lambda_max"], r["grad_norm"]) for r in sam
                     if r["grad_norm"] > 0]),
            _median([r["lambda_max"] for r in gd]), _median([r["lambda_max"] for r in sam]))
        grad_norm = _median([r["grad_norm"] for r in sam])
        measurements.append(measurement)
        summary[f"lr {lr:g}"] = {
            "two_over_lr": 2 / lr,
            "gd": {"median_lambda_max": measurement.gd_top, "median_stability": measurement.gd,
                   "final_train_loss": records[_name("gd", lr)][-1]["train_loss"]},
            "sam": {"median_lambda_max": measurement.sam_top, "median_grad_norm": grad_norm,
                    "median_stability": measurement.sam,
                    "final_train_loss": records[_name("sam", lr)][-1]["train_loss"]},
        }
        table.append([f"{lr:g}", f"{2 / lr:.3f}", fmt(measurement.gd_top, "{:.3f}"),
                      fmt(measurement.gd, "{:.3f}"), fmt(measurement.sam_top, "{:.3f}"),
                      fmt(grad_norm, "{:.3g}"), fmt(measurement.sam, "{:.3f}")])
    lrs = list(config["lrs"])
    figure = Image("edge.png", "lambda_max against 2/eta, and each optimizer's stability "
                    "quantity against its edge",
                    draw_png(functools.partial(_draw, records, lrs, rho), ncols=len(lrs),
                             nrows=2, size=(5.0 * len(lrs), 7.5)))
    notes = [f"Medians over the records from {SETTLED_FRACTION:.0%} of the run on; ||g|| is the "
             "full-batch gradient's norm at the recorded step."]
    return Findings(summary, edge_claims(measurements), table, [figure], notes)


def _draw(records: Records, lrs: list[float], rho: float, axes: Any) -> None:
    gd_colour, sam_colour = optimizer_kind("sgd").colour, optimizer_kind("sam").colour
    for column, lr in enumerate(lrs):
        gd, sam = records[_name("gd", lr)], records[_name("sam", lr)]
        top, bottom = axes[0, column], axes[1, column]
        top.plot([r["step"] for r in gd], [r["lambda_max"] for r in gd], color=gd_colour,
                 label="GD", linewidth=1.0)
        top.plot([r["step"] for r in sam], [r["lambda_max"] for r in sam], color=sam_colour,
                 label="SAM", linewidth=1.0)
        top.axhline(2 / lr, color="#222222", linestyle="--", linewidth=1.0, label="2/eta")
        top.set_title(f"lambda_max, lr {lr:g}", fontsize=10)
        bottom.plot([r["step"] for r in gd], [2 * gd_stability(lr, r["lambda_max"]) for r in gd],
                    color=gd_colour, label="GD: eta lambda", linewidth=1.0)
        bottom.plot([r["step"] for r in sam if r["grad_norm"] > 0],
                    [2 * sam_stability(lr, rho, r["lambda_max"], r["grad_norm"]) for r in sam
                     if r["grad_norm"] > 0],
                    color=sam_colour, label="SAM: eta lambda (1 + rho lambda / ||g||)",
                    linewidth=1.0)
        bottom.axhline(2.0, color="#222222", linestyle="--", linewidth=1.0)
        bottom.set_ylim(0.0, 4.0)
        bottom.set_title(f"stability quantity against 2, lr {lr:g}", fontsize=10)
        for axis in (top, bottom):
            axis.set_xlabel("step")
            axis.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
