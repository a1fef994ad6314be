r"""``sharpness-regularizers``: which sharpness SAM lowers depends on its batch (Wen, Ma & Li).

Near a manifold of minimizers, Wen, Ma & Li (ICLR 2023) show that SAM's implicit bias is a flow
along the manifold that minimizes a sharpness measure, and that the measure depends on the
batch: full-batch SAM, :math:`e = \rho\,\nabla L / \lVert \nabla L\rVert`, minimizes the largest
eigenvalue :math:`\lambda_{\max}(\nabla^2 L)`; SAM with batch 1 ("1-SAM"), each step perturbed
along one example's gradient, minimizes the trace :math:`\operatorname{Tr}\nabla^2 L`.

From the near-interpolating point (:mod:`~samhess.experiments.trajectories.interpolating`) five
trajectories with the same learning rate and radius: full-batch SAM, 1-SAM, full-batch USAM
(:math:`e = \rho\,\nabla L`, whose perturbation vanishes with the gradient), and the controls GD
and SGD with batch 1. Each records ``lambda_max`` and the exact ``hessian_trace``; the report
gives each one's relative drop, :math:`(s_0 - s_T)/s_0`.

The theory compares the directions of two flows, not their speeds: with equal learning rates
and radii the two SAMs drift at different rates, so the report also states the speed-free
comparison, the drop in ``lambda_max`` per unit drop in ``Tr H`` (both relative), which the
theory puts higher for full-batch SAM.

Reference:
    K. Wen, T. Ma, Z. Li. How Does Sharpness-Aware Minimization Minimize Sharpness? ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.report_claims import Claim
from samhess.experiments.report_pages import Image
from samhess.experiments.trajectories.arms import Arm, StartPoint
from samhess.experiments.trajectories.experiment import (
    ExperimentConfig, Findings, Records,
)
from samhess.experiments.trajectories.measures import CurvatureMeasure
from samhess.experiments.trajectories.pages import draw_png, plot_series

__all__ = ["arms", "findings", "SharpnessDrop", "relative_drop", "regularizer_claims",
           "CONTROL_LIMIT"]

#: The largest relative change of lambda_max or Tr H that counts as "left unchanged" for the
#: GD and SGD controls.
CONTROL_LIMIT = 0.01

FULL_SAM, ONE_SAM, USAM, GD, SGD = "sam", "one-sam", "usam", "gd", "sgd"


@dataclass(frozen=True)
class SharpnessDrop:
    """Relative drops :math:`(s_0 - s_T)/s_0` of one trajectory (negative: a rise)."""

    lambda_max: float
    trace: float

    @property
    def lambda_per_trace(self) -> float | None:
        """The drop in lambda_max per unit drop in Tr H; ``None`` unless Tr H fell."""
        return self.lambda_max / self.trace if self.trace > 0 else None


def relative_drop(start: float, end: float) -> float:
    """:math:`(s_0 - s_T)/s_0`."""
    return (start - end) / start


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _change(drop: float) -> str:
    """A relative drop in words: ``fell by 4.1%``, ``rose by 0.2%``."""
    return f"fell by {_percent(drop)}" if drop >= 0 else f"rose by {_percent(-drop)}"


def regularizer_claims(drops: Mapping[str, SharpnessDrop], *,
                       control_limit: float = CONTROL_LIMIT) -> list[Claim]:
    """The verdicts on the relative drops of the five trajectories.

    Args:
        drops: by trajectory: ``sam`` (full-batch SAM), ``one-sam`` (1-SAM), ``usam``, ``gd``,
            ``sgd``.
        control_limit: the controls pass when both their changes are within this fraction.
    """
    full, one, unnormalized = drops[FULL_SAM], drops[ONE_SAM], drops[USAM]
    claims = [
        Claim("full-batch SAM lowers lambda_max more than 1-SAM",
              full.lambda_max > one.lambda_max,
              f"Under full-batch SAM lambda_max {_change(full.lambda_max)}, under 1-SAM it "
              f"{_change(one.lambda_max)}"),
        Claim("1-SAM lowers Tr H more than full-batch SAM", one.trace > full.trace,
              f"Under 1-SAM Tr H {_change(one.trace)}, under full-batch SAM it "
              f"{_change(full.trace)}"),
    ]
    full_ratio, one_ratio = full.lambda_per_trace, one.lambda_per_trace
    both = full_ratio is not None and one_ratio is not None
    claims.append(Claim(
        "full-batch SAM's decrease leans towards lambda_max and 1-SAM's towards Tr H (the "
        "relative drop in lambda_max per relative drop in Tr H is larger for full-batch SAM)",
        full_ratio > one_ratio if both else None,
        f"The ratio is {full_ratio:.2f} for full-batch SAM against {one_ratio:.2f} for 1-SAM"
        if both else "Tr H did not fall under both, so the ratio is undefined"))
    claims.append(Claim(
        "USAM, whose perturbation rho g vanishes with the gradient, lowers lambda_max less "
        "than SAM", unnormalized.lambda_max < full.lambda_max,
        f"Under USAM lambda_max {_change(unnormalized.lambda_max)}, under SAM it "
        f"{_change(full.lambda_max)}"))
    controls = [drops[GD], drops[SGD]]
    largest = max(abs(value) for drop in controls for value in (drop.lambda_max, drop.trace))
    claims.append(Claim(
        f"the controls GD and SGD (batch 1) leave lambda_max and Tr H within "
        f"{_percent(control_limit)}: the decrease is SAM's", largest <= control_limit,
        f"Under GD lambda_max {_change(drops[GD].lambda_max)} and Tr H "
        f"{_change(drops[GD].trace)}; under SGD lambda_max {_change(drops[SGD].lambda_max)} "
        f"and Tr H {_change(drops[SGD].trace)}"))
    return claims


def arms(config: ExperimentConfig) -> tuple[Arm, ...]:
    sam_hp = {"lr": config["lr"], "rho": config["rho"]}
    sgd_hp = {"lr": config["lr"]}
    n = config["examples"]
    common = {"steps": config["steps"], "record_every": config["record_every"],
              "start": StartPoint.INTERPOLATING, "measure": CurvatureMeasure}
    return (
        Arm(FULL_SAM, "full-batch SAM", optimizer_kind("sam").colour, "sam", sam_hp, n, **common),
        Arm(ONE_SAM, "1-SAM", "#9467bd", "sam", sam_hp, 1, **common),
        Arm(USAM, "full-batch USAM", optimizer_kind("usam").colour, "usam", sam_hp, n, **common),
        Arm(GD, "GD", optimizer_kind("sgd").colour, "sgd", sgd_hp, n, **common),
        Arm(SGD, "SGD (batch 1)", "#17becf", "sgd", sgd_hp, 1, **common),
    )


def findings(config: ExperimentConfig, records: Records) -> Findings:
    trajectories = arms(config)
    drops, results = {}, {}
    table = [["trajectory", "batch", "final train loss", "lambda_max", "drop", "Tr H", "drop"]]
    for arm in trajectories:
        first, last = records[arm.name][0], records[arm.name][-1]
        drop = SharpnessDrop(relative_drop(first["lambda_max"], last["lambda_max"]),
                             relative_drop(first["hessian_trace"], last["hessian_trace"]))
        drops[arm.name] = drop
        results[arm.name] = {
            "label": arm.label, "batch_size": arm.batch_size, "steps": last["step"],
            "final_train_loss": last["train_loss"],
            "lambda_max": {"start": first["lambda_max"], "end": last["lambda_max"],
                           "drop": drop.lambda_max},
            "hessian_trace": {"start": first["hessian_trace"], "end": last["hessian_trace"],
                              "drop": drop.trace},
        }
        table.append([arm.label, str(arm.batch_size), f"{last['train_loss']:.3g}",
                      f"{first['lambda_max']:.4g} -> {last['lambda_max']:.4g}",
                      _percent(drop.lambda_max),
                      f"{first['hessian_trace']:.4g} -> {last['hessian_trace']:.4g}",
                      _percent(drop.trace)])

    def draw(axes) -> None:
        plot_series(axes[0, 0], trajectories, records, "lambda_max", "lambda_max")
        plot_series(axes[0, 1], trajectories, records, "hessian_trace", "Tr H (exact)")
        plot_series(axes[0, 2], trajectories, records, "train_loss", "train loss", log_scale=True)
        axes[0, 0].legend(fontsize=8)

    figure = Image("sharpness.png", "lambda_max, Tr H and the train loss along each trajectory",
                    draw_png(draw, ncols=3, size=(13.0, 4.0)))
    notes = ["Drops are relative, (start - end) / start, from the near-interpolating point to "
             "the last step; a negative drop is a rise. Tr H is exact (the sum of the Hessian's "
             "diagonal), lambda_max converged Lanczos. The first two comparisons are made after "
             "the same number of steps, so they also compare how fast the two flows run; the "
             "third compares their directions only."]
    return Findings({"arms": results}, regularizer_claims(drops), table, [figure], notes)
