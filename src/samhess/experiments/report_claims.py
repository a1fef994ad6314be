"""The seed note's claims, judged on a comparison's numbers, and the Taylor verdicts.

Each compared kind declares the claims its report tests
(:attr:`~samhess.experiments.optimizer_kinds.OptimizerKind.claims`); :func:`evaluate_claims`
judges them in the order of :class:`~samhess.experiments.optimizer_kinds.ClaimKind`:

* sharp first: the step is about (I + rho H / ||g||) g for SAM, so sharp directions gain more
  than flat ones: sharp/flat gain ratio (against the gradient step) > 1;
* flat first against its base: IRE amplifies only flat coordinates, D = (I + kappa M) D_base,
  so relative to its own base optimizer's step the ratio is < 1; against the gradient step
  AdmIRE's ratio also carries Adam's preconditioning, which alone can put it below 1;
* flatter than its reference: a lower lambda_max than the kind it is compared with (SGD for the
  SAM family) at the train loss every run of the comparison reached
  (:mod:`samhess.experiments.matched_loss`): cross-entropy curvature shrinks with the loss, so
  final values at different losses would favour whichever optimizer went further.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from samhess.experiments.optimizer_kinds import ClaimKind, optimizer_kind
from samhess.experiments.report_runs import RunFiles, label

__all__ = ["Claim", "ClaimEvidence", "evaluate_claims", "TAYLOR_ORDER_RANGE", "taylor_lines",
           "fmt"]


def fmt(value: float | None, spec: str = "{:.4g}") -> str:
    """``value`` in ``spec``, or ``n/a``."""
    return "n/a" if value is None else spec.format(value)


@dataclass
class Claim:
    """One of the seed note's claims, tested on this comparison's numbers.

    Attributes:
        claim: what is claimed.
        holds: the verdict (``None``: undecided, or withheld).
        evidence: the numbers behind it.
        members: the optimizers whose runs the verdict draws on.
        withheld: no verdict, because those runs stopped at different steps and comparing them
            would compare unequal progress
            (:func:`samhess.experiments.report_completeness.withhold_unequal_progress`).
    """

    claim: str
    holds: bool | None
    evidence: str
    members: tuple[str, ...] = ()
    withheld: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "holds": self.holds, "evidence": self.evidence,
                "withheld": self.withheld}

    @property
    def verdict(self) -> str:
        if self.withheld:
            return "WITHHELD"
        return {True: "HOLDS", False: "DOES NOT HOLD", None: "UNDECIDED"}[self.holds]

    def line(self) -> str:
        return f"{self.verdict}: {self.claim} -- {self.evidence}"


@dataclass
class ClaimEvidence:
    """What the claims are judged on.

    Attributes:
        summary: each optimizer's summary.json entry.
        groups: each optimizer's runs.
        matched: each optimizer's flatness at the matched train loss
            (:func:`samhess.experiments.report_summary.matched_entries`; empty when unknown).
    """

    summary: dict[str, dict[str, Any]]
    groups: dict[str, list[RunFiles]]
    matched: dict[str, dict[str, Any]]

    def mean(self, name: str, key: str) -> float | None:
        return (self.summary[name].get(key) or {}).get("mean")


def _share_of_records(evidence: ClaimEvidence, name: str, holds: Callable[[float], bool],
                      key: str = "gain_ratio") -> str:
    runs = evidence.groups.get(name, [])
    values = [r[key] for run in runs for r in run.records
              if r["step"] > 0 and r.get(key) is not None]
    finals = [run.records[-1].get(key) for run in runs]
    if not values:
        return ""
    final = fmt(float(np.mean(finals)), "{:.3f}") if None not in finals else "n/a"
    return (f" (median over the tracked steps after step 0; it holds at "
            f"{sum(1 for v in values if holds(v))} of {len(values)} of them; last step {final})")


def _sharp_first(name: str, evidence: ClaimEvidence) -> Claim:
    value = evidence.mean(name, "sharp_flat_gain_ratio")
    return Claim(
        f"{label(name)} accelerates sharp directions more than flat ones (sharp/flat gain "
        "ratio > 1)",
        None if value is None else value > 1,
        f"{label(name)}'s ratio is {fmt(value, '{:.3f}')}"
        + _share_of_records(evidence, name, lambda v: v > 1))


def _flat_first_vs_base(name: str, evidence: ClaimEvidence) -> Claim:
    base = label(optimizer_kind(name).base)
    value = evidence.mean(name, "ire_sharp_flat_gain_ratio_vs_base")
    against_gradient = evidence.mean(name, "sharp_flat_gain_ratio")
    return Claim(
        f"{label(name)} accelerates flat directions more than sharp ones, relative to its base "
        f"optimizer {base} (sharp/flat gain ratio against {base}'s step < 1)",
        None if value is None else value < 1,
        f"{label(name)}'s ratio against {base}'s step is {fmt(value, '{:.3f}')}"
        + _share_of_records(evidence, name, lambda v: v < 1, "gain_ratio_vs_base")
        + f"; against a plain gradient step it is {fmt(against_gradient, '{:.3f}')}")


def _flatter_than_reference(name: str, evidence: ClaimEvidence) -> Claim | None:
    reference = optimizer_kind(name).flatness_reference
    if reference not in evidence.summary:
        return None
    ours, theirs = label(name), label(reference)
    ours_matched, theirs_matched = evidence.matched.get(name), evidence.matched.get(reference)
    if not ours_matched or not theirs_matched:
        return Claim(f"{ours} is flatter than {theirs} at matched train loss", None,
                     "no train loss that every run reached is recorded")
    target = ours_matched["train_loss"]
    a, b = ours_matched["lambda_max"]["mean"], theirs_matched["lambda_max"]["mean"]
    holds = None if a is None or b is None else a < b
    text = (f"lambda_max {fmt(a, '{:.3f}')} ({ours}) vs {fmt(b, '{:.3f}')} ({theirs}) where "
            f"the train loss first reaches {target:.4f} (mean over seeds, interpolated in log "
            "loss between tracked steps)")
    pairs = [(x, y) for x, y in zip(ours_matched["per_seed"], theirs_matched["per_seed"])]
    if len(pairs) > 1 and all(x is not None and y is not None for x, y in pairs):
        lower = sum(1 for x, y in pairs if x["lambda_max"] < y["lambda_max"])
        text += f"; lower in {lower} of {len(pairs)} seeds"
    finals = (evidence.mean(name, "lambda_max"), evidence.mean(reference, "lambda_max"))
    text += (f"; at the last step {fmt(finals[0], '{:.3f}')} vs {fmt(finals[1], '{:.3f}')}, at "
             "different train losses")
    return Claim(f"{ours} is flatter than {theirs} at matched train loss (lower lambda_max where "
                 f"both reach train loss {target:.4f})", holds, text)


#: How each kind of claim is judged, in the order the report lists them.
_CLAIM_RULES: dict[ClaimKind, Callable[[str, ClaimEvidence], Claim | None]] = {
    ClaimKind.SHARP_FIRST: _sharp_first,
    ClaimKind.FLAT_FIRST_VS_BASE: _flat_first_vs_base,
    ClaimKind.FLATTER_THAN_REFERENCE: _flatter_than_reference,
}


def evaluate_claims(evidence: ClaimEvidence) -> list[Claim]:
    """The claims the compared kinds declare, judged (see the module docstring), each with the
    optimizers whose runs it draws on (the kind, and its reference for the flatness claim)."""
    claims = []
    for claim_kind, rule in _CLAIM_RULES.items():
        for name in evidence.summary:
            if claim_kind in optimizer_kind(name).claims:
                claim = rule(name, evidence)
                if claim is not None:
                    reference = optimizer_kind(name).flatness_reference
                    claim.members = ((name, reference)
                                     if claim_kind is ClaimKind.FLATTER_THAN_REFERENCE
                                     else (name,))
                    claims.append(claim)
    return claims


#: Slopes of log Taylor error against log rho that count as "falls like rho" (docs/theory.md).
TAYLOR_ORDER_RANGE = (0.8, 1.2)


def taylor_lines(groups: dict[str, list[RunFiles]]) -> list[str]:
    """One plain sentence per optimizer on whether SAM's first-order expansion holds on its
    final models, over every seed with an analysis.

    The relative error of :math:`g + H e` against the true :math:`\\nabla L(w + e)` must fall
    like :math:`\\rho` where the second-order expansion is accurate; a fitted slope outside
    :data:`TAYLOR_ORDER_RANGE` says that, on this model and at these radii, it is not.
    """
    low, high = TAYLOR_ORDER_RANGE
    lines = []
    for name, runs in groups.items():
        fitted = [(run.seed, ((run.analysis or {}).get("taylor") or {}).get("order"))
                  for run in runs]
        fitted = [(seed, order) for seed, order in fitted if order is not None]
        if not fitted:
            continue
        inside = sum(1 for _, order in fitted if low <= order <= high)
        slopes = ", ".join(f"{order:.2f}" for _, order in fitted)
        seeds = ", ".join(str(seed) for seed, _ in fitted)
        noun = "seed" if len(fitted) == 1 else "seeds"
        if inside == len(fitted):
            verdict = "the error falls like rho, as the second-order expansion predicts"
        else:
            verdict = (f"outside [{low}, {high}] for {len(fitted) - inside} of {len(fitted)} "
                       f"{noun}: there the error does not fall like rho, so the first-order "
                       "picture g + rho H g / ||g|| is not accurate on this model at these radii "
                       "(non-smooth activations such as ReLU, or rho past the expansion's range; "
                       "see docs/theory.md)")
        lines.append(f"{name}: slopes {slopes} of log error against log rho ({noun} {seeds}); "
                     f"{verdict}")
    return lines
