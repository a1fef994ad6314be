r"""``bouncing``: full-batch SAM oscillates across the top eigendirection (Bartlett et al.).

Bartlett, Long & Bousquet (JMLR 2023) show that on a quadratic SAM converges to a cycle that
bounces between the two sides of the minimum along the top eigenvector :math:`v_1`, and that on
a general loss these oscillations drive a slow drift that lowers :math:`\lambda_{\max}`. The
size of the cycle follows from one step. Write :math:`x = \langle w - w^*, v_1\rangle`, so that
:math:`\langle g, v_1\rangle = \lambda x` with :math:`\lambda = \lambda_{\max}`; SAM's step along
:math:`v_1` is

.. math::

    x \leftarrow x - \eta\lambda\Bigl(x + \rho\,\frac{\lambda x}{\lVert g\rVert}\Bigr),

and the period-2 orbit :math:`x \to -x` requires
:math:`\eta\lambda\,(1 + \rho\lambda/\lVert g\rVert) = 2`, i.e.

.. math::

    \lVert g\rVert = \frac{\eta\rho\lambda^2}{2 - \eta\lambda},

whatever share of :math:`g` lies along :math:`v_1` (the same condition as SAM's edge of
stability, Long & Bartlett 2024). In the quadratic the cycle lies along :math:`v_1`
entirely, :math:`|\langle \hat g, v_1\rangle| = 1`.

From the near-interpolating point, one full-batch SAM trajectory records at every step
:math:`\langle g, v_1\rangle` and :math:`\lVert g\rVert`, :math:`v_1` recomputed every
``eigenvector_every`` steps with its sign kept continuous
(:class:`~samhess.experiments.trajectories.measures.BounceMeasure`). Over the settled second
half of the steps the report gives the share of consecutive steps on which the sign of
:math:`\langle g, v_1\rangle` flips, the median alignment :math:`|\langle \hat g, v_1\rangle|`
and the median of :math:`\lVert g\rVert` over the cycle's prediction.

Reference:
    P. L. Bartlett, P. M. Long, O. Bousquet. The Dynamics of Sharpness-Aware Minimization:
    Bouncing Across Ravines and Drifting Towards Wide Minima. JMLR 24(316), 2023.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from typing import Any

from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.report_claims import Claim
from samhess.experiments.report_pages import Image
from samhess.experiments.trajectories.arms import Arm, StartPoint
from samhess.experiments.trajectories.experiment import (
    ExperimentConfig, Findings, Records,
)
from samhess.experiments.trajectories.measures import BounceMeasure
from samhess.experiments.trajectories.pages import draw_png

__all__ = ["arms", "findings", "flip_rate", "cycle_gradient_norm", "bouncing_claims",
           "SETTLED_FRACTION", "FLIP_THRESHOLD", "CYCLE_TOLERANCE", "ALIGNED"]

#: The statistics are taken over the steps after this fraction of the run (the cycle settles).
SETTLED_FRACTION = 0.5
#: Bouncing: the sign of <g, v_1> flips on at least this share of consecutive steps.
FLIP_THRESHOLD = 0.9
#: The cycle's size: the median ||g|| over its prediction is within this of 1.
CYCLE_TOLERANCE = 0.1
#: "Mostly along v_1": |<g_hat, v_1>| at least 1/sqrt(2), half of ||g||^2.
ALIGNED = 1 / math.sqrt(2)

ARM = "sam"
_LAST_STEPS = 40


def flip_rate(projections: Sequence[float]) -> float | None:
    """The share of consecutive pairs whose signs differ (pairs with a zero left out)."""
    pairs = [(a, b) for a, b in zip(projections, projections[1:]) if a != 0 and b != 0]
    if not pairs:
        return None
    return sum(1 for a, b in pairs if (a > 0) != (b > 0)) / len(pairs)


def cycle_gradient_norm(lr: float, rho: float, top: float) -> float | None:
    r""":math:`\eta\rho\lambda^2/(2 - \eta\lambda)`; ``None`` where :math:`\eta\lambda \ge 2`."""
    return lr * rho * top**2 / (2 - lr * top) if lr * top < 2 else None


def bouncing_claims(flips: float | None, alignment: float | None, cycle_ratio: float | None, *,
                    flip_threshold: float = FLIP_THRESHOLD,
                    cycle_tolerance: float = CYCLE_TOLERANCE,
                    aligned: float = ALIGNED) -> list[Claim]:
    """The verdicts on the settled steps' statistics.

    Args:
        flips: the share of consecutive steps on which the sign of <g, v_1> flips.
        alignment: the median |<g_hat, v_1>|.
        cycle_ratio: the median ||g|| over the cycle's eta rho lambda^2 / (2 - eta lambda).
    """
    unmeasured = "Not measured"
    return [
        Claim(f"SAM bounces across the top eigendirection: the sign of <g, v_1> flips on at "
              f"least {flip_threshold:.0%} of consecutive steps",
              None if flips is None else flips >= flip_threshold,
              unmeasured if flips is None else f"It flips on {flips:.1%} of them"),
        Claim(f"the bounce has the size of the 2-cycle: ||g|| = eta rho lambda^2 / "
              f"(2 - eta lambda) within {cycle_tolerance:.0%}",
              None if cycle_ratio is None else abs(cycle_ratio - 1) <= cycle_tolerance,
              unmeasured if cycle_ratio is None
              else f"The median ratio of ||g|| to it is {cycle_ratio:.3f}"),
        Claim(f"as in the quadratic, the gradient lies mostly along v_1 "
              f"(median |<g_hat, v_1>| >= {aligned:.3f})",
              None if alignment is None else alignment >= aligned,
              unmeasured if alignment is None else
              f"The median is {alignment:.3f}, so {alignment**2:.1%} of ||g||^2 lies along v_1"),
    ]


def arms(config: ExperimentConfig) -> tuple[Arm, ...]:
    measure = functools.partial(BounceMeasure, eigenvector_every=config["eigenvector_every"])
    return (Arm(ARM, "full-batch SAM", optimizer_kind("sam").colour, "sam",
                {"lr": config["lr"], "rho": config["rho"]}, config["examples"], config["steps"],
                record_every=1, start=StartPoint.INTERPOLATING, measure=measure,
                checkpoint_every=config["checkpoint_every"]),)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def findings(config: ExperimentConfig, records: Records) -> Findings:
    lr, rho = config["lr"], config["rho"]
    run = records[ARM]
    settled = [r for r in run if r["step"] >= SETTLED_FRACTION * config["steps"]]
    projections = [r["gradient_on_top_eigenvector"] for r in settled]
    flips = flip_rate(projections)
    alignment = _median([abs(r["gradient_on_top_eigenvector"]) / r["grad_norm"]
                         for r in settled if r["grad_norm"] > 0])
    ratios = []
    for r in settled:
        predicted = cycle_gradient_norm(lr, rho, r["lambda_max"])
        if predicted:
            ratios.append(r["grad_norm"] / predicted)
    cycle_ratio = _median(ratios)
    first, last = run[0], run[-1]
    summary: dict[str, Any] = {
        "settled_from_step": settled[0]["step"] if settled else None,
        "flip_rate": flips, "median_alignment": alignment,
        "median_gradient_norm_over_cycle": cycle_ratio,
        "lambda_max": {"start": first["lambda_max"], "end": last["lambda_max"]},
        "final_train_loss": last["train_loss"],
    }
    table = [["quantity", "value"],
             ["settled steps", f"{settled[0]['step']} to {last['step']}" if settled else "none"],
             ["sign flips of <g, v_1>", "n/a" if flips is None else f"{flips:.1%}"],
             ["median |<g_hat, v_1>|", "n/a" if alignment is None else f"{alignment:.3f}"],
             ["median ||g|| / (eta rho lambda^2 / (2 - eta lambda))",
              "n/a" if cycle_ratio is None else f"{cycle_ratio:.3f}"],
             ["lambda_max", f"{first['lambda_max']:.4g} -> {last['lambda_max']:.4g}"],
             ["train loss", f"{first['train_loss']:.3g} -> {last['train_loss']:.3g}"]]
    figure = Image("bouncing.png", "The gradient along v_1, its norm against the 2-cycle, and "
                    "lambda_max", draw_png(functools.partial(_draw, run, lr, rho), ncols=2,
                                           nrows=2, size=(11.0, 7.5)))
    notes = [f"Statistics over the steps from {SETTLED_FRACTION:.0%} of the run on; v_1 is "
             f"recomputed every {config['eigenvector_every']} steps with its sign kept "
             "continuous."]
    return Findings(summary, bouncing_claims(flips, alignment, cycle_ratio), table, [figure],
                    notes)


def _draw(run: Sequence[dict[str, Any]], lr: float, rho: float, axes: Any) -> None:
    colour = optimizer_kind("sam").colour
    steps = [r["step"] for r in run]
    tail = run[-_LAST_STEPS:]
    axis = axes[0, 0]
    axis.plot([r["step"] for r in tail], [r["gradient_on_top_eigenvector"] for r in tail],
              color=colour, marker="o", markersize=3, linewidth=1.0)
    axis.axhline(0.0, color="#444444", linewidth=0.8)
    axis.set_title(f"<g, v_1> over the last {len(tail)} steps", fontsize=10)
    axis = axes[0, 1]
    axis.plot(steps, [abs(r["gradient_on_top_eigenvector"]) / r["grad_norm"] if r["grad_norm"]
                      else float("nan") for r in run], color=colour, linewidth=0.4)
    axis.set_title("|<g_hat, v_1>|", fontsize=10)
    axis = axes[1, 0]
    axis.plot(steps, [r["grad_norm"] for r in run], color=colour, linewidth=0.6, label="||g||")
    predicted = [cycle_gradient_norm(lr, rho, r["lambda_max"]) for r in run]
    axis.plot(steps, [float("nan") if p is None else p for p in predicted], color="#222222",
              linestyle="--", linewidth=1.0, label="eta rho lambda^2 / (2 - eta lambda)")
    axis.set_yscale("log")
    axis.set_title("||g|| and the 2-cycle's prediction", fontsize=10)
    axis.legend(fontsize=8)
    axis = axes[1, 1]
    axis.plot(steps, [r["lambda_max"] for r in run], color=colour, linewidth=1.2)
    axis.set_title("lambda_max", fontsize=10)
    for axis in axes.flat:
        axis.set_xlabel("step")
        axis.grid(True, alpha=0.3)
