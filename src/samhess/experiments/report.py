"""Reports of a run or a comparison, rebuilt from the run files alone.

:func:`build_report` reads ``config.json``, ``metrics.jsonl``, ``timing.json`` and
``analysis/analysis.json`` of each run and writes, into the run's (or the comparison's)
directory:

* ``summary.json``: for a comparison, each optimizer's name mapped to its entry; for one run,
  the entry itself. An entry holds ``final_train_loss``, ``test_accuracy``, ``lambda_max``,
  ``hessian_trace``, ``sharp_flat_gain_ratio`` and ``ire_sharp_flat_gain_ratio_vs_base``,
  each as ``{"mean": ..., "std": ...}`` over the seeds (sample standard deviation; 0.0 for one
  seed; ``null`` where a run has no such value), plus ``seeds``, ``steps`` and ``complete``.
  The values are those of the last record of each run, except the gain ratios (median over the
  records after step 0). Wall-clock time stays in each run's ``timing.json``: it is the one
  thing two runs of one configuration do not share. In a comparison, the
  entry of an IRE kind whose base optimizer was also run (``ire`` and ``sgd``, ``sam-ire`` and
  ``sam``, ``admire`` and ``adamw``) also holds ``steps_to_base_final_loss``
  (:func:`steps_to_base_final_loss`).
* ``claims.json`` (comparisons): whether the seed note's claims hold on this task.
* ``plots/*.png``: curves over training (losses, test accuracy, lambda_max, Tr H), gains
  against eigenvalue with the predicted line, Taylor error against rho, the final spectral
  density.
* ``report.md`` (linking the PNGs) and ``report.html`` (the PNGs embedded, self-contained).

The output is a function of the input files only: no dates, no paths outside the directory,
no wall-clock times, floats printed with fixed formats, PNGs written without a software or date
stamp. Rebuilding a report from the same files gives byte-identical files, and so do two runs of
one configuration.

An unfinished run or comparison (a run stopped before its last step or its final analysis, a
member not started) is reported as it stands, labelled at the top and per member, and every
claim that would compare runs at different steps is withheld (:func:`progress_of`,
:func:`withhold_unequal_progress`).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samhess.errors import RunFileError
from samhess.experiments import runfiles
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.optimizer_kinds import (
    OPTIMIZER_KINDS,
    ClaimKind,
    OptimizerKind,
    optimizer_kind,
)
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.rundir import read_compare_config, read_run_config
from samhess.experiments.runfiles import (
    CLAIMS_FILE, COMPARE_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, TIMING_FILE,
)

ANALYSIS_FILE = Path("analysis") / "analysis.json"
PLOTS_DIR = "plots"

#: Entry keys of summary.json and the record key (or timing key) each comes from.
SUMMARY_KEYS: dict[str, str] = {
    "final_train_loss": "train_loss",
    "test_accuracy": "test_accuracy",
    "lambda_max": "lambda_max",
    "hessian_trace": "hessian_trace",
    "sharp_flat_gain_ratio": "gain_ratio",
    "ire_sharp_flat_gain_ratio_vs_base": "gain_ratio_vs_base",
}

#: Record keys summarized by their median over the records after step 0 (one step's ratio
#: varies from step to step; the median over the run is the steadier statement).
_MEDIAN_KEYS = ("gain_ratio", "gain_ratio_vs_base")


#: ``config.json``'s ``source`` for a run tracked in the user's own loop by
#: :class:`samhess.Tracker`: its optimizer is the user's, named by its wrapping chain
#: (``IRE(SAM(SGD))``) and no registered kind, and what the loop does not say (seed, data set,
#: batch size) is null. :func:`read_run` lets no other unregistered optimizer through.
TRACKER_SOURCE = "samhess.Tracker"


def _kind(name: str) -> OptimizerKind | None:
    """The registered kind called ``name``; ``None`` for the optimizer of a Tracker run."""
    return OPTIMIZER_KINDS.get(name)


def _label(name: str) -> str:
    kind = _kind(name)
    return name if kind is None else kind.label

_COLUMNS = (
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("test_accuracy", "test accuracy", "{:.2%}"),
    ("lambda_max", "lambda_max", "{:.3f}"),
    ("hessian_trace", "Tr(H)", "{:.2f}"),
    ("sharp_flat_gain_ratio", "sharp/flat vs grad step", "{:.3f}"),
    ("ire_sharp_flat_gain_ratio_vs_base", "sharp/flat vs base", "{:.3f}"),
)

@dataclass
class RunFiles:
    """The files of one finished (or interrupted) run, as read back."""

    directory: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    timing: dict[str, Any] | None
    analysis: dict[str, Any] | None
    #: Parts of the final analysis that failed, with their errors (left out of ``analysis``).
    analysis_errors: dict[str, str] = field(default_factory=dict)

    @property
    def optimizer(self) -> str:
        return self.config["optimizer"]

    @property
    def seed(self) -> int:
        return self.config["seed"]


def read_run(directory: Path) -> RunFiles:
    """Read one run directory.

    Raises:
        RunFileError: ``config.json`` or ``metrics.jsonl`` is missing or malformed, or the log
            holds no record.
    """
    stored = runfiles.read_json(directory / CONFIG_FILE)
    if isinstance(stored, dict) and stored.get("source") == TRACKER_SOURCE:
        config = stored  # what the user's loop could say, with nulls for the rest
        if "optimizer" not in config:
            raise RunFileError(f"{directory / CONFIG_FILE} is not a run configuration")
    else:
        config = read_run_config(directory).to_dict()  # an unknown name is an error
    records = MetricsLog(directory / METRICS_FILE).records()
    if not records:
        raise RunFileError(f"{directory / METRICS_FILE} holds no records; the run has not "
                           "started")
    timing_path = directory / TIMING_FILE
    timing = runfiles.read_json(timing_path) if timing_path.exists() else None
    analysis_path = directory / ANALYSIS_FILE
    analysis = runfiles.read_json(analysis_path) if analysis_path.exists() else None
    errors: dict[str, str] = {}
    if analysis is not None:
        if not isinstance(analysis, dict) or not isinstance(analysis.get("step"), int):
            raise RunFileError(f"{analysis_path} is not a samhess analysis")
        errors = {key: value["error"] for key, value in analysis.items()
                  if isinstance(value, dict) and isinstance(value.get("error"), str)}
        analysis = {key: value for key, value in analysis.items() if key not in errors}
    return RunFiles(directory=directory, config=config, records=records, timing=timing,
                    analysis=analysis, analysis_errors=errors)


def run_dir_of(compare_dir: Path, optimizer: str, seed: int) -> Path:
    """Where a comparison keeps one member run: ``DIR/<optimizer>/seed-<seed>``."""
    return compare_dir / optimizer / f"seed-{seed}"


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return {"mean": None, "std": None}
    mean = float(np.mean(present))
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return {"mean": mean, "std": std}


def median_gain_ratio(run: RunFiles, key: str = "gain_ratio") -> float | None:
    """The median of a sharp/flat gain ratio (record ``key``) over a run's records after step 0.

    The ratio describes single steps and varies from one to the next; the median over the run
    is the steadier statement (step 0, at initialization, is left out). ``None`` when no record
    holds the key (``gain_ratio_vs_base`` of an optimizer without IRE, or an older run).
    """
    values = [r[key] for r in run.records if r["step"] > 0 and r.get(key) is not None]
    if not values:
        values = [r[key] for r in run.records if r.get(key) is not None]
    return float(np.median(values)) if values else None


def summary_entry(runs: Sequence[RunFiles]) -> dict[str, Any]:
    """One optimizer's entry of summary.json, over its seeds.

    Every value is the last record's, except the gain ratios ``sharp_flat_gain_ratio`` and
    ``ire_sharp_flat_gain_ratio_vs_base`` (the median over the records after step 0,
    :func:`median_gain_ratio`). ``complete`` says whether every seed ran to its last step and
    its final analysis (a comparison also clears it for a seed that never started).
    """
    entry: dict[str, Any] = {}
    for key, source in SUMMARY_KEYS.items():
        if source in _MEDIAN_KEYS:
            values = [median_gain_ratio(run, source) for run in runs]
        else:
            values = [run.records[-1].get(source) for run in runs]
        entry[key] = _mean_std(values)
    entry["seeds"] = [run.seed for run in runs]
    entry["steps"] = [run.records[-1]["step"] for run in runs]
    entry["complete"] = all(progress_of(run).complete for run in runs)
    return entry


def steps_to_base_final_loss(variant: Sequence[Sequence[dict[str, Any]]],
                             base: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    r"""How soon an IRE kind reaches the final train loss of its base optimizer.

    The IRE paper (Wang et al., NeurIPS 2024) reports AdmIRE reaching AdamW's loss in about
    half the steps on Llama pretraining. With :math:`L_\text{base}` the base's final train loss
    (its last record, mean over seeds), :math:`T_\text{base}` the step of that record, and
    :math:`\bar L(t)` the variant's train loss at tracked step :math:`t` (mean over its seeds,
    at the steps every seed recorded), this is the first :math:`t` with
    :math:`\bar L(t) \le L_\text{base}` and the speed-up :math:`T_\text{base} / t`. The answer is
    only as fine as the tracking grid (``track_every``).

    Args:
        variant: the IRE kind's records, one list per seed (dicts with ``step`` and
            ``train_loss``, as in metrics.jsonl).
        base: its base optimizer's records, one list per seed.

    Returns:
        ``{"base_final_train_loss", "base_steps", "steps", "speedup"}``: ``steps`` is ``None``
        when no tracked step reaches the base's final loss, and ``speedup`` is ``None`` then and
        when the variant starts at or below it (``steps`` 0).
    """
    finals = [runs[-1].get("train_loss") for runs in base if runs]
    if not finals or any(value is None for value in finals):
        return {"base_final_train_loss": None, "base_steps": None, "steps": None,
                "speedup": None}
    target = float(np.mean(finals))
    base_steps = max(int(runs[-1]["step"]) for runs in base if runs)
    losses: dict[int, list[float]] = {}
    for runs in variant:
        for record in runs:
            if record.get("train_loss") is not None:
                losses.setdefault(int(record["step"]), []).append(float(record["train_loss"]))
    reached = next((step for step in sorted(losses)
                    if len(losses[step]) == len(variant) and np.mean(losses[step]) <= target),
                   None)
    return {"base_final_train_loss": target, "base_steps": base_steps, "steps": reached,
            "speedup": base_steps / reached if reached else None}


def convergence_entries(groups: dict[str, list[RunFiles]]) -> dict[str, dict[str, Any]]:
    """:func:`steps_to_base_final_loss` of every IRE kind whose base optimizer was also run."""
    out = {}
    for name in groups:
        base = optimizer_kind(name).base
        if base is not None and base in groups:
            out[name] = {"base": base, **steps_to_base_final_loss(
                [run.records for run in groups[name]], [run.records for run in groups[base]])}
    return out


def convergence_line(name: str, entry: dict[str, Any]) -> str:
    """One plain sentence on whether the IRE kind ``name`` reached its base's final loss."""
    label, base = _label(name), _label(entry["base"])
    target = entry["base_final_train_loss"]
    if target is None:
        return f"{label} against {base}: the base's final train loss is unknown"
    where = (f"{base}'s final train loss ({target:.4f}, at step {entry['base_steps']}, mean over "
             "seeds)")
    if entry["steps"] is None:
        return (f"{label} did not reach {where} at any tracked step: no speed-up over {base} "
                "here")
    speedup = entry["speedup"]
    tail = (f", {speedup:.2f}x fewer steps than {base}" if speedup is not None
            else ", already at its first record")
    return f"{label} reached {where} at step {entry['steps']}{tail}"


@dataclass
class Claim:
    """One of the seed note's claims, tested on this comparison's numbers.

    A withheld claim (``withheld``) has no verdict: its runs stopped at different steps, and
    comparing them would be comparing unequal progress (:func:`withhold_unequal_progress`).
    """

    claim: str
    holds: bool | None
    evidence: str
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


def _fmt(value: float | None, spec: str = "{:.4g}") -> str:
    return "n/a" if value is None else spec.format(value)


def _fmt_stat(stat: dict[str, Any], spec: str) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = spec.format(stat["mean"])
    if stat["std"]:
        text += " ± " + spec.format(stat["std"])
    return text


def _share_of_records(groups: dict[str, list[RunFiles]], name: str, holds,
                      key: str = "gain_ratio") -> str:
    values = [r[key] for run in groups.get(name, []) for r in run.records
              if r["step"] > 0 and r.get(key) is not None]
    finals = [run.records[-1].get(key) for run in groups.get(name, [])]
    if not values:
        return ""
    final = _fmt(float(np.mean(finals)), "{:.3f}") if None not in finals else "n/a"
    return (f" (median over the tracked steps after step 0; it holds at "
            f"{sum(1 for v in values if holds(v))} of {len(values)} of them; last step {final})")


def _mean_of(summary: dict[str, dict[str, Any]], name: str, key: str) -> float | None:
    return (summary[name].get(key) or {}).get("mean")


def _sharp_first(name: str, summary: dict[str, dict[str, Any]],
                 groups: dict[str, list[RunFiles]]) -> Claim:
    label = _label(name)
    value = _mean_of(summary, name, "sharp_flat_gain_ratio")
    return Claim(
        f"{label} accelerates sharp directions more than flat ones (sharp/flat gain ratio > 1)",
        None if value is None else value > 1,
        f"{label}'s ratio is {_fmt(value, '{:.3f}')}"
        + _share_of_records(groups, name, lambda v: v > 1))


def _flat_first_vs_base(name: str, summary: dict[str, dict[str, Any]],
                        groups: dict[str, list[RunFiles]]) -> Claim:
    label, base_label = _label(name), _label(optimizer_kind(name).base)
    value = _mean_of(summary, name, "ire_sharp_flat_gain_ratio_vs_base")
    against_gradient = _mean_of(summary, name, "sharp_flat_gain_ratio")
    return Claim(
        f"{label} accelerates flat directions more than sharp ones, relative to its base "
        f"optimizer {base_label} (sharp/flat gain ratio against {base_label}'s step < 1)",
        None if value is None else value < 1,
        f"{label}'s ratio against {base_label}'s step is {_fmt(value, '{:.3f}')}"
        + _share_of_records(groups, name, lambda v: v < 1, "gain_ratio_vs_base")
        + f"; against a plain gradient step it is {_fmt(against_gradient, '{:.3f}')}")


def _flatter_than_reference(name: str, summary: dict[str, dict[str, Any]],
                            groups: dict[str, list[RunFiles]]) -> Claim | None:
    reference = optimizer_kind(name).flatness_reference
    if reference not in summary:
        return None
    label, reference_label = _label(name), _label(reference)
    ours = summary[name]["lambda_max"]["mean"]
    theirs = summary[reference]["lambda_max"]["mean"]
    holds = None if ours is None or theirs is None else ours < theirs
    evidence = (f"lambda_max {_fmt(ours, '{:.3f}')} ({label}) vs {_fmt(theirs, '{:.3f}')} "
                f"({reference_label})")
    pairs = [(a.records[-1].get("lambda_max"), b.records[-1].get("lambda_max"))
             for a, b in zip(groups.get(name, []), groups.get(reference, []))]
    if len(pairs) > 1 and all(None not in pair for pair in pairs):
        evidence += (f", mean over seeds; lower in {sum(1 for a, b in pairs if a < b)} of "
                     f"{len(pairs)} seeds")
    return Claim(f"{label} ends flatter than {reference_label} (lower final lambda_max)", holds,
                 evidence)


#: How each kind of claim is judged, in the order the report lists them.
_CLAIM_RULES = {
    ClaimKind.SHARP_FIRST: _sharp_first,
    ClaimKind.FLAT_FIRST_VS_BASE: _flat_first_vs_base,
    ClaimKind.FLATTER_THAN_REFERENCE: _flatter_than_reference,
}


def evaluate_claims(summary: dict[str, dict[str, Any]],
                    groups: dict[str, list[RunFiles]]) -> list[Claim]:
    """The seed note's claims that the compared kinds declare
    (:attr:`~samhess.experiments.optimizer_kinds.OptimizerKind.claims`), in the order of
    :class:`~samhess.experiments.optimizer_kinds.ClaimKind`:

    * sharp first: the step is about (I + rho H / ||g||) g for SAM, so sharp directions gain
      more than flat ones: sharp/flat gain ratio (against the gradient step) > 1;
    * flat first against its base: IRE amplifies only flat coordinates,
      D = (I + kappa M) D_base, so relative to its own base optimizer's step the ratio is
      < 1; against the gradient step AdmIRE's ratio also carries Adam's preconditioning, which
      alone can put it below 1;
    * flatter than its reference: a lower final lambda_max than the kind it is compared with
      (SGD for the SAM family), when that kind was run.
    """
    return [claim for claim, _ in _claims_with_members(summary, groups)]


def _claims_with_members(summary: dict[str, dict[str, Any]], groups: dict[str, list[RunFiles]]
                         ) -> list[tuple[Claim, tuple[str, ...]]]:
    """Each claim of :func:`evaluate_claims` with the optimizers whose runs it draws on."""
    claims = []
    for claim_kind, rule in _CLAIM_RULES.items():
        for name in summary:
            if claim_kind in optimizer_kind(name).claims:
                claim = rule(name, summary, groups)
                if claim is not None:
                    reference = optimizer_kind(name).flatness_reference
                    members = ((name, reference) if claim_kind is ClaimKind.FLATTER_THAN_REFERENCE
                               else (name,))
                    claims.append((claim, members))
    return claims


# ---------------------------------------------------------------------------------------------
# Completeness: an unfinished run or comparison is reported as it stands, labelled as such, and
# a claim comparing runs at different steps is withheld.

@dataclass(frozen=True)
class Progress:
    """How far one member run got.

    Attributes:
        optimizer, seed: the member.
        step: its last record's step (``None``: it never started).
        steps: the steps it was configured for.
        analysed: whether its final analysis is there, of its last step.
    """

    optimizer: str
    seed: int
    step: int | None
    steps: int
    analysed: bool

    @property
    def complete(self) -> bool:
        return self.step == self.steps and self.analysed

    def line(self) -> str:
        """One plain phrase on where the member stands."""
        member = f"{self.optimizer} seed {self.seed}"
        if self.step is None:
            return f"{member}: not started"
        if self.step != self.steps:
            return f"{member}: stopped at step {self.step} of {self.steps}"
        return f"{member}: trained to step {self.steps}, final analysis missing"


def progress_of(run: RunFiles) -> Progress:
    """Where ``run`` stands, from its records and its analysis."""
    steps = int(run.config["steps"])
    # A loop tracked by samhess.Tracker has no final analysis: its last record ends it.
    analysed = run.config.get("source") == TRACKER_SOURCE or (
        run.analysis is not None and run.analysis.get("step") == steps)
    return Progress(run.optimizer, run.seed, int(run.records[-1]["step"]), steps, analysed)


def incomplete_members(groups: dict[str, list[RunFiles]], missing: Sequence[Progress]
                       ) -> list[Progress]:
    """The members that are not complete: started ones first, in report order, then those
    that never started."""
    started = [progress_of(run) for runs in groups.values() for run in runs]
    return [p for p in started if not p.complete] + list(missing)


def _unequal_progress(members: Sequence[str], groups: dict[str, list[RunFiles]],
                      missing: Sequence[Progress]) -> str | None:
    """Why the runs of ``members`` are not comparable (stopped at different steps, or a seed
    never started), or ``None`` when they all reached the same step."""
    if any(p.optimizer in members for p in missing):
        return "a seed of " + ", ".join(sorted({p.optimizer for p in missing
                                                if p.optimizer in members})) + " never started"
    reached = sorted({progress_of(run).step for name in members for run in groups.get(name, [])})
    if len(reached) > 1:
        return "the runs stopped at different steps (" + ", ".join(map(str, reached)) + ")"
    return None


def withhold_unequal_progress(claims: list[tuple[Claim, tuple[str, ...]]],
                              groups: dict[str, list[RunFiles]], missing: Sequence[Progress]
                              ) -> list[Claim]:
    """The claims, each withheld (no verdict) where its runs did not reach the same step."""
    out = []
    for claim, members in claims:
        reason = _unequal_progress(members, groups, missing)
        out.append(claim if reason is None else Claim(
            claim.claim, None, f"withheld: {reason}; finish the comparison with samhess "
            "compare --resume", withheld=True))
    return out


def incompleteness_banner(subject: str, incomplete: Sequence[Progress]) -> list[str]:
    """The lines at the top of an unfinished report: what is unfinished, member by member."""
    if not incomplete:
        return []
    return [f"INCOMPLETE: this {subject} is unfinished; values are those of the last record "
            "each run reached, and claims comparing runs at different steps are withheld",
            *(progress.line() for progress in incomplete)]


# ---------------------------------------------------------------------------------------------
# Plots. Built on matplotlib's object API (no pyplot state), with the default style, so that the
# same data give the same bytes whatever the user's matplotlibrc says.

def _default_style():
    """matplotlib's own defaults, whatever the user's matplotlibrc sets, for this block only."""
    import matplotlib

    style = {k: v for k, v in matplotlib.rcParamsDefault.items()
             if not k.startswith("backend") and k not in ("interactive", "webagg.port")}
    style["svg.hashsalt"] = "samhess"
    return matplotlib.rc_context(style)


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.4, 4.2)):
    from matplotlib.figure import Figure

    # Fixed margins instead of a layout engine: a third of the drawing time, same result here.
    figure = Figure(figsize=size, dpi=100)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    if nrows * ncols > 1:
        figure.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.95, wspace=0.22,
                               hspace=0.32)
    else:
        figure.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.91)
    return figure, axes


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp: the bytes then depend on the data and the renderer only.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _colour(name: str) -> str:
    """The kind's colour (:mod:`samhess.experiments.optimizer_kinds`), the same in every plot."""
    kind = _kind(name)
    return "#000000" if kind is None else kind.colour


def _series(run: RunFiles, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in run.records:
        value = record.get(key)
        if value is not None:
            steps.append(record["step"])
            values.append(value)
    return steps, values


def plot_curves(groups: dict[str, list[RunFiles]]) -> bytes:
    """Loss, test accuracy, lambda_max and Tr(H) over training, one colour per optimizer."""
    figure, axes = _figure(2, 2, size=(10.0, 7.0))
    panels = [
        (axes[0, 0], "train_loss", "train loss (solid), test loss (dashed)", True),
        (axes[0, 1], "test_accuracy", "test accuracy", False),
        (axes[1, 0], "lambda_max", "lambda_max (top Hessian eigenvalue)", False),
        (axes[1, 1], "hessian_trace", "Tr(H) (Hutch++, ± 1 stderr)", False),
    ]
    for axis, key, title, log_scale in panels:
        for name, runs in groups.items():
            for index, run in enumerate(runs):
                label = name if index == 0 else None
                steps, values = _series(run, key)
                axis.plot(steps, values, color=_colour(name), label=label, linewidth=1.5,
                          marker="o", markersize=3)
                if key == "train_loss":
                    steps, values = _series(run, "test_loss")
                    axis.plot(steps, values, color=_colour(name), linestyle="--", linewidth=1.0)
                if key == "hessian_trace":
                    errors = [r.get("hessian_trace_stderr") or 0.0 for r in run.records
                              if r.get("hessian_trace") is not None]
                    low = [v - e for v, e in zip(values, errors)]
                    high = [v + e for v, e in zip(values, errors)]
                    axis.fill_between(steps, low, high, color=_colour(name), alpha=0.15,
                                      linewidth=0)
        if log_scale:
            axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return _png_bytes(figure)


def _first_analysis(runs: Sequence[RunFiles]) -> dict[str, Any] | None:
    for run in runs:
        if run.analysis is not None:
            return run.analysis
    return None


def plot_gains(groups: dict[str, list[RunFiles]]) -> bytes | None:
    """Gain of the final step along the top Hessian eigenvectors against their eigenvalue.

    Filled markers: measured gains per eigenvector; the hollow marker at 0: the gain on the
    flat subspace (everything orthogonal to the top-k eigenvectors); dashed line: the
    prediction 1 + rho lambda / ||g|| (SAM), 1 + rho lambda (USAM), 1 (SGD); crosses: the
    prediction where it depends on more than lambda (IRE: each eigenvector's mass on the mask).
    """
    figure, axes = _figure(size=(7.0, 4.6))
    axis = axes[0, 0]
    drawn = False
    for name, runs in groups.items():
        analysis = _first_analysis(runs) or {}
        gains, sharp_flat = analysis.get("gains"), analysis.get("sharp_flat") or {}
        if not gains:
            continue
        colour = _colour(name)
        eigenvalues = np.asarray(gains["eigenvalues"], dtype=float)
        measured = np.asarray([np.nan if g is None else g for g in gains["gains"]], dtype=float)
        axis.scatter(eigenvalues, measured, color=colour, label=f"{name} measured", s=24,
                     zorder=3)
        if sharp_flat.get("flat_gain") is not None:
            axis.scatter([0.0], [sharp_flat["flat_gain"]], facecolors="none", edgecolors=colour,
                         s=60, linewidths=1.5, zorder=3)
        predictions = gains.get("predictions")
        if predictions and all(p is not None for p in predictions):
            predicted = np.asarray(predictions, dtype=float)
            if gains.get("predictions_linear_in_eigenvalue"):
                # 1, 1 + rho lambda / ||g||, 1 + rho lambda: a line in lambda, 1 at lambda = 0.
                xs = np.concatenate([[0.0], eigenvalues])
                ys = np.concatenate([[1.0], predicted])
                order = np.argsort(xs, kind="stable")
                axis.plot(xs[order], ys[order], color=colour, linestyle="--", linewidth=1.2,
                          label=f"{name} predicted")
            else:  # IRE's prediction depends on each eigenvector's mass on the mask
                axis.scatter(eigenvalues, predicted, color=colour, marker="x", s=30,
                             label=f"{name} predicted")
        drawn = True
    if not drawn:
        return None
    axis.axhline(1.0, color="#444444", linewidth=0.8, linestyle=":")
    axis.set_xlabel("Hessian eigenvalue (final model; hollow marker at 0: flat subspace)")
    axis.set_ylabel("gain <v, D> / <v, -lr g>")
    axis.set_title("Gain of the final step along the top eigenvectors", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    return _png_bytes(figure)


def plot_taylor(groups: dict[str, list[RunFiles]]) -> bytes | None:
    """Relative error of SAM's first-order gradient expansion against rho (log-log)."""
    figure, axes = _figure(size=(6.4, 4.2))
    axis = axes[0, 0]
    drawn = False
    for name, runs in groups.items():
        taylor = (_first_analysis(runs) or {}).get("taylor")
        if not taylor:
            continue
        rhos = np.asarray(taylor["rhos"], dtype=float)
        errors = np.asarray([np.nan if e is None else e for e in taylor["grad_rel_error"]],
                            dtype=float)
        order = taylor.get("order")
        label = f"{name} (slope {order:.2f})" if order is not None else name
        axis.plot(rhos, errors, color=_colour(name), marker="o", label=label)
        drawn = True
    if not drawn:
        return None
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("rho")
    axis.set_ylabel("relative error of g + H e")
    axis.set_title("SAM gradient vs its first-order Taylor prediction", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    return _png_bytes(figure)


def plot_spectrum(groups: dict[str, list[RunFiles]]) -> bytes | None:
    """The final Hessian spectral density (stochastic Lanczos quadrature), one per optimizer."""
    figure, axes = _figure(size=(6.4, 4.2))
    axis = axes[0, 0]
    drawn = False
    for name, runs in groups.items():
        density = (_first_analysis(runs) or {}).get("spectral_density")
        if not density:
            continue
        grid = np.asarray(density["grid"], dtype=float)
        values = np.asarray(density["density"], dtype=float)
        axis.plot(grid, np.maximum(values, 1e-12), color=_colour(name), label=name,
                  linewidth=1.2)
        drawn = True
    if not drawn:
        return None
    axis.set_yscale("log")
    axis.set_ylim(bottom=1e-6)
    axis.set_xlabel("eigenvalue")
    axis.set_ylabel("density")
    axis.set_title("Hessian spectral density of the final model", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return _png_bytes(figure)


#: Slopes of log Taylor error against log rho that count as "falls like rho" (docs/theory.md).
TAYLOR_ORDER_RANGE = (0.8, 1.2)


def taylor_lines(groups: dict[str, list[RunFiles]]) -> list[str]:
    """One plain sentence per optimizer on whether SAM's first-order expansion holds on its model.

    The relative error of :math:`g + H e` against the true :math:`\\nabla L(w + e)` must fall
    like :math:`\\rho` where the second-order expansion is accurate; a fitted slope outside
    :data:`TAYLOR_ORDER_RANGE` says that, on this model and at these radii, it is not.
    """
    low, high = TAYLOR_ORDER_RANGE
    lines = []
    for name, runs in groups.items():
        order = ((_first_analysis(runs) or {}).get("taylor") or {}).get("order")
        if order is None:
            continue
        if low <= order <= high:
            verdict = "the error falls like rho, as the second-order expansion predicts"
        else:
            verdict = (f"outside [{low}, {high}]: the error does not fall like rho, so the "
                       "first-order picture g + rho H g / ||g|| is not accurate on this model "
                       "at these radii (non-smooth activations such as ReLU, or rho past the "
                       "expansion's range; see docs/theory.md)")
        lines.append(f"{name}: slope {order:.2f} of log error against log rho; {verdict}")
    return lines


_PLOTS = (
    ("curves.png", "Curves over training", plot_curves),
    ("gains.png", "Gains against eigenvalue, with the prediction", plot_gains),
    ("taylor.png", "Taylor error against rho", plot_taylor),
    ("spectrum.png", "Final spectral density", plot_spectrum),
)


# ---------------------------------------------------------------------------------------------
# Text.

def format_table(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows of the summary table, header first."""
    rows = [["optimizer"] + [title for _, title, _ in _COLUMNS]]
    for name, entry in summary.items():
        label = name if entry.get("complete", True) else f"{name} (incomplete)"
        rows.append([label] + [_fmt_stat(entry[key], spec) for key, _, spec in _COLUMNS])
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _task_line(config: dict[str, Any]) -> str:
    # A run tracked in the user's own loop (samhess.Tracker) leaves unknown values as null.
    what = " / ".join(str(config[key]) for key in ("dataset", "model") if config.get(key) is not None)
    batch = f" of batch {config['batch_size']}" if config.get("batch_size") is not None else ""
    return (f"{what}, {config['steps']} steps{batch}, track every {config['track_every']}, "
            f"top-{config['top_k']} eigenvalues, Hutch++ with {config['trace_matvecs']} matvecs, "
            f"{config['dtype']}")


def _hyperparameters(name: str, config: dict[str, Any]) -> str:
    """The values of the hyperparameters the kind reads, in its order (a Tracker run's
    optimizer: the learning rate, momentum and weight decay its config holds)."""
    kind = _kind(name)
    keys = ("lr", "momentum", "weight_decay") if kind is None else kind.reads
    return ", ".join(f"{key.replace('_', ' ')} {config[key]:g}"
                     for key in keys if config.get(key) is not None)


_EXPLANATION = (
    "Values are those of the last tracked step (mean ± sample std over seeds), except the "
    "sharp/flat gains: the median over the tracked steps after step 0. lambda_max and "
    "Tr(H) are the Hessian's top eigenvalue and trace of the mean loss on a fixed tracking batch. "
    "The sharp/flat gain is the optimizer's step measured on the span of the top Hessian "
    "eigenvectors, divided by the same on its orthogonal complement (the flat directions), each "
    "relative to a reference step. 'vs grad step': the reference is a plain gradient step with "
    "the same learning rate: 1 for SGD, above 1 where sharp directions are accelerated most "
    "(the seed note's picture of SAM), below 1 where flat ones are. 'vs base' (IRE kinds only): "
    "the reference is the step of IRE's own base optimizer (SGD, SAM or AdamW) from the same "
    "state, which isolates what IRE adds; IRE's claims are judged on it."
)


_CONVERGENCE_TITLE = "Does IRE reach its base optimizer's loss in fewer steps?"
_CONVERGENCE_NOTE = (
    "The IRE paper reports AdmIRE reaching AdamW's loss in about half the steps (Llama "
    "pretraining). Here: the first tracked step at which the IRE kind's train loss (mean over "
    "seeds) is at or below its base optimizer's final train loss, on the tracking grid."
)


_ANALYSIS_ERRORS_TITLE = "Parts of the final analysis that failed"


def _markdown(title: str, task: str, hyper: list[str], table: list[list[str]],
              claims: list[Claim], convergence: list[str],
              images: list[tuple[str, str]], notes: dict[str, list[str]],
              banner: Sequence[str] = (), errors: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    if banner:
        lines += [f"> **{banner[0]}.**", ">", *(f"> - {line}" for line in banner[1:]), ""]
    lines += [f"Task: {task}.", ""]
    lines += [f"- {line}" for line in hyper]
    lines += ["", _markdown_table(table), "", _EXPLANATION, ""]
    if claims:
        lines += ["## Does the seed note's picture hold here?", ""]
        lines += [f"- **{c.verdict}**: {c.claim}. {c.evidence}." for c in claims]
        lines.append("")
    if convergence:
        lines += [f"## {_CONVERGENCE_TITLE}", "", _CONVERGENCE_NOTE, ""]
        lines += [f"- {line}." for line in convergence]
        lines.append("")
    if errors:
        lines += [f"## {_ANALYSIS_ERRORS_TITLE}", "", *(f"- {line}." for line in errors), ""]
    for filename, caption in images:
        lines += [f"## {caption}", "", f"![{caption}]({PLOTS_DIR}/{filename})", ""]
        if notes.get(filename):
            lines += [*(f"- {line}." for line in notes[filename]), ""]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 62em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.holds { color: #1a7f37; font-weight: bold; }
.fails { color: #b3261e; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
p.note { color: #555; font-size: 0.92em; }
.withheld { color: #8a6d00; font-weight: bold; }
div.incomplete { border: 2px solid #b3261e; padding: 0 1em; margin: 1em 0; }
""".strip()


def _html(title: str, task: str, hyper: list[str], table: list[list[str]],
          claims: list[Claim], convergence: list[str],
          images: list[tuple[str, str, bytes]], notes: dict[str, list[str]],
          banner: Sequence[str] = (), errors: Sequence[str] = ()) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>"]
    if banner:
        parts += ['<div class="incomplete">', f"<p><strong>{esc(banner[0])}.</strong></p>",
                  "<ul>", *(f"<li>{esc(line)}</li>" for line in banner[1:]), "</ul>", "</div>"]
    parts += [f"<p>Task: {esc(task)}.</p>", "<ul>"]
    parts += [f"<li>{esc(line)}</li>" for line in hyper]
    parts += ["</ul>", "<table>",
              "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in table[0]) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:]]
    parts += ["</table>", f'<p class="note">{esc(_EXPLANATION)}</p>']
    if claims:
        parts += ["<h2>Does the seed note's picture hold here?</h2>", "<ul>"]
        for claim in claims:
            css, word = {True: ("holds", "HOLDS"), False: ("fails", "DOES NOT HOLD"),
                         None: ("", "UNDECIDED")}[claim.holds]
            if claim.withheld:
                css, word = "withheld", claim.verdict
            parts.append(f'<li><span class="{css}">{word}</span>: {esc(claim.claim)}. '
                         f"{esc(claim.evidence)}.</li>")
        parts.append("</ul>")
    if convergence:
        parts += [f"<h2>{esc(_CONVERGENCE_TITLE)}</h2>",
                  f'<p class="note">{esc(_CONVERGENCE_NOTE)}</p>', "<ul>"]
        parts += [f"<li>{esc(line)}.</li>" for line in convergence]
        parts.append("</ul>")
    if errors:
        parts += [f"<h2>{esc(_ANALYSIS_ERRORS_TITLE)}</h2>", "<ul>",
                  *(f"<li>{esc(line)}.</li>" for line in errors), "</ul>"]
    for filename, caption, data in images:
        encoded = base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{esc(caption)}</h2>",
                  f'<img id="{esc(filename[:-4])}" alt="{esc(caption)}" '
                  f'src="data:image/png;base64,{encoded}">']
        if notes.get(filename):
            parts += ["<ul>", *(f"<li>{esc(line)}.</li>" for line in notes[filename]), "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    directory: Path
    summary: dict[str, Any]
    claims: list[Claim]
    table: list[list[str]]
    markdown_path: Path
    html_path: Path
    plot_paths: list[Path] = field(default_factory=list)
    convergence: list[str] = field(default_factory=list)
    #: The incompleteness banner (empty for a finished run or comparison).
    incomplete: list[str] = field(default_factory=list)
    analysis_errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every member ran to its last step and its final analysis."""
        return not self.incomplete

    def screen_summary(self) -> str:
        lines = [*self.incomplete, *([""] if self.incomplete else []), _text_table(self.table)]
        if self.claims:
            lines += ["", *[claim.line() for claim in self.claims]]
        if self.convergence:
            lines += ["", *[f"{line}." for line in self.convergence]]
        if self.analysis_errors:
            lines += ["", *[f"Final analysis: {line}." for line in self.analysis_errors]]
        lines += ["", f"Report: {self.html_path}"]
        return "\n".join(lines)


def _groups_of(directory: Path) -> tuple[str, dict[str, Any], dict[str, list[RunFiles]], bool,
                                         list[Progress]]:
    """Title, a representative config, the runs by optimizer, whether it is a comparison, and
    the members that never started (a comparison's seeds without records)."""
    if (directory / COMPARE_FILE).exists():
        spec = read_compare_config(directory)
        groups: dict[str, list[RunFiles]] = {}
        missing = []
        for name in spec.optimizers:
            runs = []
            for seed in range(spec.seeds):
                run_dir = run_dir_of(directory, name, seed)
                log = MetricsLog(run_dir / METRICS_FILE)
                if (run_dir / CONFIG_FILE).exists() and log.records():
                    runs.append(read_run(run_dir))
                else:
                    missing.append(Progress(name, seed, None, spec.task.steps, False))
            if runs:
                groups[name] = runs
        if not groups:
            raise RunFileError(f"{directory} holds a comparison none of whose runs has started; "
                               "run it with samhess compare --resume")
        first = next(iter(groups.values()))[0].config
        return "samhess comparison", first, groups, True, missing
    if (directory / CONFIG_FILE).exists():
        run = read_run(directory)
        label = _label(run.optimizer)
        title = f"samhess run: {label}" + ("" if label == run.optimizer else f" ({run.optimizer})")
        title += "" if run.seed is None else f", seed {run.seed}"
        return title, run.config, {run.optimizer: [run]}, False, []
    raise RunFileError(f"{directory} holds no run (config.json) or comparison (compare.json)")


def analysis_error_lines(groups: dict[str, list[RunFiles]]) -> list[str]:
    """One line per part of a final analysis that failed: member, part and error."""
    return [f"{run.optimizer} seed {run.seed}: {part} failed ({error})"
            for runs in groups.values() for run in runs
            for part, error in run.analysis_errors.items()]


def build_report(directory: str | Path) -> Report:
    """Write summary.json, claims.json (comparisons), plots, report.md and report.html.

    Holds the directory's lock while it writes, and writes only over files samhess wrote.

    Raises:
        RunFileError: the run files are missing or malformed.
        RunDirectoryError: another process writes the directory, or a file the report would
            replace is not samhess's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunFileError(f"{directory} is not a directory")
    with run_directory_lock(directory, "samhess report"):
        return _build_report(directory)


def _build_report(directory: Path) -> Report:
    title, config, groups, is_compare, missing = _groups_of(directory)
    incomplete = incomplete_members(groups, missing)
    summary = {name: summary_entry(runs) for name, runs in groups.items()}
    for progress in missing:
        if progress.optimizer in summary:
            summary[progress.optimizer]["complete"] = False
    claims = (withhold_unequal_progress(_claims_with_members(summary, groups), groups, missing)
              if is_compare else [])
    convergence = []
    if is_compare:
        for name, entry in convergence_entries(groups).items():
            summary[name]["steps_to_base_final_loss"] = entry
            reason = _unequal_progress((name, entry["base"]), groups, missing)
            convergence.append(convergence_line(name, entry) if reason is None else
                               f"{_label(name)} against {_label(entry['base'])}: withheld, "
                               f"{reason}")
    table = format_table(summary)
    hyper = [f"{name}: {_hyperparameters(name, runs[0].config)}" for name, runs in groups.items()]
    images: list[tuple[str, str, bytes]] = []
    with _default_style():
        for filename, caption, plot in _PLOTS:
            data = plot(groups)
            if data is not None:
                images.append((filename, caption, data))

    banner = incompleteness_banner("comparison" if is_compare else "run", incomplete)
    errors = analysis_error_lines(groups)
    task = _task_line(config)
    notes = {"taylor.png": taylor_lines(groups)}
    markdown = _markdown(title, task, hyper, table, claims, convergence,
                         [(f, c) for f, c, _ in images], notes, banner, errors)
    page = _html(title, task, hyper, table, claims, convergence, images, notes, banner, errors)
    files = {f"{PLOTS_DIR}/{filename}": data for filename, _, data in images}
    files[SUMMARY_FILE] = (runfiles.dumps_json(
        summary if is_compare else next(iter(summary.values()))) + "\n").encode("utf-8")
    if is_compare:
        files[CLAIMS_FILE] = (runfiles.dumps_json([c.to_dict() for c in claims])
                              + "\n").encode("utf-8")
    files["report.md"] = markdown.encode("utf-8")
    files["report.html"] = page.encode("utf-8")
    OwnedFiles(directory).write_files(files)
    return Report(directory=directory, summary=summary, claims=claims, table=table,
                  markdown_path=directory / "report.md", html_path=directory / "report.html",
                  plot_paths=[directory / PLOTS_DIR / filename for filename, _, _ in images],
                  convergence=convergence, incomplete=banner, analysis_errors=errors)


def format_run_summary(out: Path, summary: dict[str, Any], report_path: Path,
                       resumed_from: int | None, analysis_errors: Sequence[str] = ()) -> str:
    """The lines ``samhess run`` prints at the end."""
    lines = []
    if resumed_from is not None:
        lines.append(f"Resumed from step {resumed_from}.")
    lines.append(_text_table(format_table(summary)))
    if analysis_errors:
        lines += ["", *[f"Final analysis: {line}." for line in analysis_errors]]
    lines += ["", f"Run files: {out}", f"Report: {report_path}"]
    return "\n".join(lines)
