r"""``ire-manifold``: SAM-IRE lowers Tr H about (1 + kappa) times as fast as SAM (Wang et al.).

Near the manifold of minimizers SAM's implicit regularization is a slow flow along the
manifold; IRE (Wang et al., NeurIPS 2024) multiplies the step on the flat coordinates by
:math:`1 + \kappa` and leaves the sharp ones alone, so where the mask holds the manifold's
tangent directions the flow, and with it the decrease of the sharpness it minimizes, runs
:math:`1 + \kappa` times as fast, while the sharp directions keep SAM's stability.

From the near-interpolating point, a SAM and a SAM-IRE trajectory with the same learning rate,
radius and batch (default 1: 1-SAM, which Wen, Ma & Li show minimizes :math:`\operatorname{Tr}
H`; see ``sharpness-regularizers``). IRE's mask ranks the sampled-label Fisher diagonal on all
examples every ``refresh_every`` steps (with batch 1 one example's diagonal would rank the
coordinates). Both record the exact :math:`\operatorname{Tr} H`.

The speed-up is read off the two curves: for fractions :math:`f` of SAM's own decrease, the
level :math:`T_0 - f (T_0 - T_{\text{SAM}})`, the first step at which each trajectory's trace
reaches it (interpolated linearly between records), and the ratio of SAM's step to SAM-IRE's.
The report compares the median ratio with :math:`1 + \kappa`.

Reference:
    M. Wang, J. Wang, H. He, Z. Wang, G. Huang, F. Xiong, Z. Li, W. E, L. Wu. Improving
    Generalization and Convergence by Enhancing Implicit Regularization. NeurIPS 2024.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samhess.errors import UsageError
from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.report_claims import Claim
from samhess.experiments.report_pages import Image
from samhess.experiments.trajectories.arms import Arm, StartPoint
from samhess.experiments.trajectories.experiment import (
    ExperimentConfig, Findings, Records,
)
from samhess.experiments.trajectories.measures import CurvatureMeasure
from samhess.experiments.trajectories.pages import draw_png, plot_series

__all__ = ["arms", "findings", "check", "first_reach", "LevelCrossing", "trace_speedups",
           "ire_claims", "FRACTIONS", "SPEEDUP_TOLERANCE"]

#: Fractions of SAM's decrease of Tr H at which the two trajectories are compared.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: "The theory's factor": the median speed-up within this fraction of 1 + kappa.
SPEEDUP_TOLERANCE = 0.2

BASE, VARIANT = "sam", "sam-ire"


def first_reach(records: Sequence[Mapping[str, Any]], key: str, level: float) -> float | None:
    """The first step at which ``key`` is at or below ``level``, linear between records.

    Returns:
        The (fractional) step, or ``None`` when no record reaches ``level``.
    """
    for index, record in enumerate(records):
        value = record[key]
        if value > level:
            continue
        if index == 0:
            return float(record["step"])
        before = records[index - 1]
        weight = (before[key] - level) / (before[key] - value)
        return before["step"] + weight * (record["step"] - before["step"])
    return None


@dataclass(frozen=True)
class LevelCrossing:
    """Where both trajectories first reach one level of Tr H."""

    fraction: float
    level: float
    base_step: float | None
    variant_step: float | None

    @property
    def speedup(self) -> float | None:
        if not self.base_step or not self.variant_step:
            return None
        return self.base_step / self.variant_step


def trace_speedups(base: Sequence[Mapping[str, Any]], variant: Sequence[Mapping[str, Any]],
                   fractions: Sequence[float] = FRACTIONS) -> list[LevelCrossing]:
    """The crossings of the levels ``T_0 - f (T_0 - T_base)`` of ``hessian_trace``."""
    start, end = base[0]["hessian_trace"], base[-1]["hessian_trace"]
    out = []
    for fraction in fractions:
        level = start - fraction * (start - end)
        out.append(LevelCrossing(fraction, level, first_reach(base, "hessian_trace", level),
                                 first_reach(variant, "hessian_trace", level)))
    return out


def median_speedup(crossings: Sequence[LevelCrossing]) -> float | None:
    """The median speed-up over the levels both trajectories reached."""
    values = [c.speedup for c in crossings if c.speedup is not None]
    return statistics.median(values) if values else None


def ire_claims(speedup: float | None, kappa: float, *,
               tolerance: float = SPEEDUP_TOLERANCE) -> list[Claim]:
    """The verdicts on the median speed-up of SAM-IRE over SAM in lowering Tr H."""
    evidence = ("SAM did not lower Tr H, or SAM-IRE did not reach its levels" if speedup is None
                else f"The median speed-up over SAM's levels is {speedup:.2f}")
    return [
        Claim("SAM-IRE lowers Tr H faster than SAM (median speed-up > 1)",
              None if speedup is None else speedup > 1, evidence),
        Claim(f"SAM-IRE lowers Tr H 1 + kappa = {1 + kappa:g} times as fast as SAM (median "
              f"speed-up within {tolerance:.0%} of it)",
              None if speedup is None else abs(speedup / (1 + kappa) - 1) <= tolerance,
              evidence + ("" if speedup is None else f", {speedup / (1 + kappa):.2f} of 1 + "
                          "kappa")),
    ]


def check(config: ExperimentConfig) -> None:
    if config["batch_size"] > config["examples"]:
        raise UsageError(f"--batch-size {config['batch_size']} is invalid: it must be at most "
                         f"--examples ({config['examples']})")


def arms(config: ExperimentConfig) -> tuple[Arm, ...]:
    sam_hp = {"lr": config["lr"], "rho": config["rho"]}
    ire_hp = {**sam_hp, "kappa": config["kappa"], "gamma": config["gamma"],
              "refresh_every": config["refresh_every"]}
    common = {"batch_size": config["batch_size"], "steps": config["steps"],
              "record_every": config["record_every"], "start": StartPoint.INTERPOLATING,
              "measure": CurvatureMeasure}
    batch = config["batch_size"]
    return (Arm(BASE, f"SAM, batch {batch}", optimizer_kind("sam").colour, "sam", sam_hp,
                **common),
            Arm(VARIANT, f"SAM-IRE, batch {batch}", optimizer_kind("sam-ire").colour, "sam-ire",
                ire_hp, mask_on_all_examples=True, **common))


def findings(config: ExperimentConfig, records: Records) -> Findings:
    kappa = config["kappa"]
    crossings = trace_speedups(records[BASE], records[VARIANT])
    speedup = median_speedup(crossings)
    trajectories = arms(config)
    ends = {arm.name: records[arm.name][-1] for arm in trajectories}
    start = records[BASE][0]
    table = [["level of Tr H", "SAM reaches it at step", "SAM-IRE at step", "speed-up"]]
    for c in crossings:
        table.append([f"{c.level:.4g} ({c.fraction:.0%} of SAM's decrease)", _step(c.base_step),
                      _step(c.variant_step),
                      "n/a" if c.speedup is None else f"{c.speedup:.2f}"])
    summary = {
        "kappa": kappa, "median_speedup": speedup, "predicted_speedup": 1 + kappa,
        "levels": [{"fraction": c.fraction, "level": c.level, "sam_step": c.base_step,
                    "sam_ire_step": c.variant_step, "speedup": c.speedup} for c in crossings],
        "start": {"hessian_trace": start["hessian_trace"], "lambda_max": start["lambda_max"],
                  "train_loss": start["train_loss"]},
        "end": {name: {"hessian_trace": r["hessian_trace"], "lambda_max": r["lambda_max"],
                       "train_loss": r["train_loss"]} for name, r in ends.items()},
    }
    figure = Image("ire-manifold.png", "Tr H, lambda_max and the train loss under SAM and "
                    "SAM-IRE", draw_png(functools.partial(_draw, trajectories, records),
                                        ncols=3, size=(13.0, 4.0)))
    notes = [f"From Tr H = {start['hessian_trace']:.4g} at the near-interpolating point, SAM "
             f"ends at {ends[BASE]['hessian_trace']:.4g} (train loss "
             f"{ends[BASE]['train_loss']:.3g}) and SAM-IRE at "
             f"{ends[VARIANT]['hessian_trace']:.4g} (train loss "
             f"{ends[VARIANT]['train_loss']:.3g}) after {ends[BASE]['step']} steps."]
    return Findings(summary, ire_claims(speedup, kappa), table, [figure], notes)


def _step(step: float | None) -> str:
    return "not reached" if step is None else f"{step:.0f}"


def _draw(trajectories: Sequence[Arm], records: Records, axes: Any) -> None:
    plot_series(axes[0, 0], trajectories, records, "hessian_trace", "Tr H (exact)")
    plot_series(axes[0, 1], trajectories, records, "lambda_max", "lambda_max")
    plot_series(axes[0, 2], trajectories, records, "train_loss", "train loss", log_scale=True)
    axes[0, 0].legend(fontsize=8)
