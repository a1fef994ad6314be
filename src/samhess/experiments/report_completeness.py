"""How far a report's runs got: an unfinished run or comparison is reported as it stands,
labelled as such, and a verdict comparing runs at different steps is withheld.

A member run is complete when its last record is its configured last step and its final
analysis is of that step (:class:`MemberProgress`). A report over incomplete members opens with
a banner naming each (:func:`incompleteness_banner`), marks them in its tables, and withholds
every claim whose runs did not all reach the same step (:func:`withhold_unequal_progress`),
matched-loss verdicts included: the lowest train loss every run reached is then set by the run
that stopped first, and the others are read at a loss they passed earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from samhess.experiments.report_claims import Claim
from samhess.experiments.report_runs import TRACKER_SOURCE, RunFiles, RunGroups

__all__ = ["MemberProgress", "progress_of", "incomplete_members", "unequal_progress",
           "withhold_unequal_progress", "incompleteness_banner"]


@dataclass(frozen=True)
class MemberProgress:
    """How far one member run got.

    Attributes:
        optimizer, seed: the member.
        step: its last record's step (``None``: it never started).
        steps: the steps it was configured for.
        analysed: whether its final analysis is there, of its last step.
    """

    optimizer: str
    seed: int | None
    step: int | None
    steps: int
    analysed: bool

    @property
    def complete(self) -> bool:
        return self.step == self.steps and self.analysed

    def line(self) -> str:
        """One plain phrase on where the member stands."""
        member = self.optimizer if self.seed is None else f"{self.optimizer} seed {self.seed}"
        if self.step is None:
            return f"{member}: not started"
        if self.step != self.steps:
            return f"{member}: stopped at step {self.step} of {self.steps}"
        return f"{member}: trained to step {self.steps}, final analysis missing"


def progress_of(run: RunFiles) -> MemberProgress:
    """Where ``run`` stands, from its records and its analysis."""
    steps = int(run.config["steps"])
    # A loop tracked by samhess.Tracker has no final analysis: its last record ends it.
    analysed = run.config.get("source") == TRACKER_SOURCE or (
        run.analysis is not None and run.analysis.get("step") == steps)
    return MemberProgress(run.optimizer, run.seed, int(run.records[-1]["step"]), steps,
                          analysed)


def _not_started(found: RunGroups) -> list[MemberProgress]:
    steps = int(found.config["steps"])
    return [MemberProgress(name, seed, None, steps, False) for name, seed in found.not_started]


def incomplete_members(found: RunGroups) -> list[MemberProgress]:
    """The members that are not complete: started ones first, in report order, then those
    that never started."""
    started = [progress_of(run) for runs in found.groups.values() for run in runs]
    return [p for p in started if not p.complete] + _not_started(found)


def unequal_progress(members: Sequence[str], found: RunGroups) -> str | None:
    """Why the runs of the optimizers ``members`` are not comparable (a seed never started, or
    they stopped at different steps), or ``None`` when they all reached the same step."""
    absent = sorted({name for name, _ in found.not_started if name in members})
    if absent:
        return "a seed of " + ", ".join(absent) + " never started"
    reached = sorted({progress_of(run).step for name in members
                      for run in found.groups.get(name, [])})
    if len(reached) > 1:
        return "the runs stopped at different steps (" + ", ".join(map(str, reached)) + ")"
    return None


def withhold_unequal_progress(claims: Sequence[Claim], found: RunGroups) -> list[Claim]:
    """The claims, each withheld (no verdict) where the runs it draws on
    (:attr:`~samhess.experiments.report_claims.Claim.members`) did not reach the same step."""
    out = []
    for claim in claims:
        reason = unequal_progress(claim.members, found)
        out.append(claim if reason is None else replace(
            claim, holds=None, withheld=True,
            evidence=f"withheld: {reason}; finish the comparison with samhess compare --resume"))
    return out


def incompleteness_banner(subject: str, incomplete: Sequence[MemberProgress]) -> list[str]:
    """The lines at the top of an unfinished report: what is unfinished, member by member
    (none for a finished one)."""
    if not incomplete:
        return []
    return [f"INCOMPLETE: this {subject} is unfinished; values are those of the last record "
            "each run reached, and claims comparing runs at different steps are withheld",
            *(progress.line() for progress in incomplete)]
