r"""``m-sharpness``: perturbations from smaller micro-batches end flatter (Foret et al.).

Foret et al. (ICLR 2021, section 4.1) observed that SAM generalizes better when each of the
:math:`n/m` micro-batches of ``m`` examples is perturbed by its own gradient ("m-sharpness"),
the smaller ``m`` the better; Andriushchenko & Flammarion (ICML 2022) found the same with lower
sharpness. m-SAM (:class:`samhess.optim.MSAM`) takes, with micro-batch losses :math:`L_i`,

.. math::

    w \leftarrow w - \eta\,\frac{m}{n}\sum_i \nabla L_i\Bigl(w + \rho\,
    \frac{\nabla L_i(w)}{\lVert \nabla L_i(w)\rVert}\Bigr).

From the seeded initialization, one trajectory per micro-batch size with the same learning rate,
radius and batch (every step the same ``batch_size`` examples, split into ``batch_size / m``
micro-batches); ``m = batch_size`` is SAM. Since the curvature of a loss shrinks as the loss
falls, the trajectories are compared where they reach the same train loss: the lowest loss all
of them reached, each one's ``lambda_max`` and ``Tr H`` interpolated there linearly in
:math:`\log L` between its records (:mod:`samhess.experiments.matched_loss`, as the comparison
report does).

References:
    P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-Aware Minimization for Efficiently
    Improving Generalization. ICLR 2021.

    M. Andriushchenko, N. Flammarion. Towards Understanding Sharpness-Aware Minimization.
    ICML 2022.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samhess.errors import UsageError
from samhess.experiments.matched_loss import crossing, matched_loss
from samhess.experiments.report_claims import Claim, fmt
from samhess.experiments.report_pages import Image
from samhess.experiments.trajectories.arms import Arm, StartPoint
from samhess.experiments.trajectories.experiment import (
    ExperimentConfig, Findings, Records,
)
from samhess.experiments.trajectories.measures import CurvatureMeasure
from samhess.experiments.trajectories.pages import draw_png, plot_series

__all__ = ["arms", "findings", "check", "AtMatchedLoss", "m_sharpness_claims"]

KIND = "msam"
#: One colour per trajectory, smallest micro-batch first.
_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


@dataclass(frozen=True)
class AtMatchedLoss:
    """One trajectory's curvature at the matched train loss."""

    micro_batch_size: int
    lambda_max: float
    trace: float


def m_sharpness_claims(rows: Sequence[AtMatchedLoss]) -> list[Claim]:
    """The verdicts: the smallest micro-batch ends flatter than the largest (SAM's), in ``Tr H``
    and in ``lambda_max``; the evidence lists every size's value, smallest first."""
    rows = sorted(rows, key=lambda row: row.micro_batch_size)
    smallest, largest = rows[0], rows[-1]
    claims = []
    for attribute, name in (("trace", "Tr H"), ("lambda_max", "lambda_max")):
        values = [getattr(row, attribute) for row in rows]
        increasing = all(a < b for a, b in zip(values, values[1:]))
        sizes = ", ".join(str(row.micro_batch_size) for row in rows)
        listed = ", ".join(f"{value:.4g}" for value in values)
        claims.append(Claim(
            f"at matched train loss, perturbations from micro-batches of "
            f"{smallest.micro_batch_size} end with a lower {name} than from "
            f"{largest.micro_batch_size}", values[0] < values[-1],
            f"At m = {sizes} {name} is {listed}; it "
            f"{'rises' if increasing else 'does not rise'} monotonically with m"))
    return claims


def check(config: ExperimentConfig) -> None:
    batch = config["batch_size"]
    if batch > config["examples"]:
        raise UsageError(f"--batch-size {batch} is invalid: it must be at most --examples "
                         f"({config['examples']})")
    for size in config["micro_batch_sizes"]:
        if batch % int(size):
            raise UsageError(f"--micro-batch-sizes {int(size)} is invalid: it must divide "
                             f"--batch-size ({batch})")


def _sizes(config: ExperimentConfig) -> list[int]:
    return sorted({int(size) for size in config["micro_batch_sizes"]})


def arms(config: ExperimentConfig) -> tuple[Arm, ...]:
    batch = config["batch_size"]
    common = {"batch_size": batch, "steps": config["steps"],
              "record_every": config["record_every"], "start": StartPoint.INITIALIZATION,
              "measure": CurvatureMeasure}
    return tuple(
        Arm(f"m-{size}", f"m = {size}", _COLOURS[index % len(_COLOURS)], KIND,
            {"lr": config["lr"], "rho": config["rho"], "msam_m": batch // size},
            **common)
        for index, size in enumerate(_sizes(config)))


def findings(config: ExperimentConfig, records: Records) -> Findings:
    trajectories = arms(config)
    runs = [records[arm.name] for arm in trajectories]
    loss = matched_loss(runs)
    rows, summary = [], {"matched_train_loss": loss, "trajectories": {}}
    table = [["micro-batch size m", "perturbations per step", "final train loss",
              "lambda_max at matched loss", "Tr H at matched loss"]]
    for arm, size, run in zip(trajectories, _sizes(config), runs):
        found = None if loss is None else crossing(run, loss)
        top = None if found is None else found.values["lambda_max"]
        trace = None if found is None else found.values["hessian_trace"]
        if found is not None:
            rows.append(AtMatchedLoss(size, top, trace))
        summary["trajectories"][arm.name] = {
            "micro_batch_size": size, "final_train_loss": run[-1]["train_loss"],
            "lambda_max_at_matched_loss": top, "hessian_trace_at_matched_loss": trace}
        table.append([str(size), str(config["batch_size"] // size),
                      f"{run[-1]['train_loss']:.3g}", fmt(top), fmt(trace)])
    claims = m_sharpness_claims(rows) if len(rows) == len(runs) else [
        Claim("at matched train loss, smaller micro-batches end flatter", None,
              "the trajectories reached no common train loss")]
    figure = Image("m-sharpness.png", "lambda_max and Tr H against the train loss",
                    draw_png(functools.partial(_draw, trajectories, records, loss), ncols=3,
                             size=(13.0, 4.0)))
    notes = [] if loss is None else [
        f"Matched train loss {loss:.4g}: the lowest every trajectory reached; values there are "
        "interpolated linearly in log loss between records."]
    return Findings(summary, claims, table, [figure], notes)


def _draw(trajectories: Sequence[Arm], records: Records, loss: float | None, axes: Any) -> None:
    for column, (key, title) in enumerate((("lambda_max", "lambda_max"),
                                           ("hessian_trace", "Tr H (exact)"))):
        axis = axes[0, column]
        for arm in trajectories:
            run = records[arm.name]
            axis.plot([r["train_loss"] for r in run], [r[key] for r in run], color=arm.colour,
                      label=arm.label, marker="o", markersize=3, linewidth=1.2)
        if loss is not None:
            axis.axvline(loss, color="#222222", linestyle="--", linewidth=1.0)
        axis.set_xscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("train loss (falling to the right)")
        axis.set_title(f"{title} against the train loss", fontsize=10)
        axis.grid(True, alpha=0.3)
    plot_series(axes[0, 2], trajectories, records, "train_loss", "train loss", log_scale=True)
    axes[0, 0].legend(fontsize=8)
