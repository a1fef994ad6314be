"""The numbers of a report: each optimizer's summary over its seeds, flatness at matched train
loss, and how soon an IRE kind reaches its base optimizer's loss.

``summary.json`` holds, per optimizer, ``final_train_loss``, ``test_accuracy``, ``lambda_max``,
``hessian_trace``, ``sharp_flat_gain_ratio`` and ``ire_sharp_flat_gain_ratio_vs_base``, each
as ``{"mean": ..., "std": ...}`` over the seeds (sample standard deviation; 0.0 for one seed;
``null`` where a run has no such value), plus ``seeds``, ``steps`` and ``complete``
(:mod:`samhess.experiments.report_completeness`). The values are those of the last record of
each run, except the gain ratios (median over the records after step 0). Wall-clock time stays
in each run's ``timing.json``: it is the one thing two runs of one configuration do not share,
and summary.json is byte-identical between them. In a comparison each entry also
holds ``at_matched_train_loss`` (:func:`matched_entries`) and, for an IRE kind whose base
optimizer was also run, ``steps_to_base_final_loss`` (:func:`steps_to_base_final_loss`). Where
the runs recorded per-layer curvature, ``layers`` lists each layer's lambda_max, Tr(H) and share
of the blocks' traces at the last step every seed measured them
(:func:`samhess.experiments.report.layer_summary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from samhess.experiments.matched_loss import MATCHED_KEYS, crossing, matched_loss
from samhess.experiments.optimizer_kinds import optimizer_kind
from samhess.experiments.report_completeness import progress_of
from samhess.experiments.report_runs import RunFiles, label

__all__ = ["SUMMARY_KEYS", "mean_std", "median_gain_ratio", "summary_entry",
           "matched_entries", "steps_to_base_final_loss", "convergence_entries",
           "convergence_line"]

#: Entry keys of summary.json and the record key each comes from.
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


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """``{"mean", "std"}`` of the finite values (sample std; 0.0 for one; ``None`` for none)."""
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
        entry[key] = mean_std(values)
    entry["seeds"] = [run.seed for run in runs]
    entry["steps"] = [run.records[-1]["step"] for run in runs]
    entry["complete"] = all(progress_of(run).complete for run in runs)
    return entry


def matched_entries(groups: dict[str, list[RunFiles]]) -> dict[str, dict[str, Any]]:
    """Each optimizer's flatness at the comparison's matched train loss
    (:mod:`samhess.experiments.matched_loss`).

    Returns:
        Per optimizer: ``train_loss`` (the matched loss :math:`L^*`, the same for all),
        ``step``, ``lambda_max`` and ``hessian_trace`` (each ``{"mean", "std"}`` over seeds, at
        the crossing interpolated in log loss), and ``per_seed`` (the values of each seed, in
        seed order; ``None`` for a seed that never reached :math:`L^*`). Empty when some run
        holds no usable record.
    """
    target = matched_loss([run.records for runs in groups.values() for run in runs])
    if target is None:
        return {}
    out = {}
    for name, runs in groups.items():
        crossings = [crossing(run.records, target) for run in runs]
        entry: dict[str, Any] = {"train_loss": target, "step": mean_std(
            [None if c is None else c.step for c in crossings])}
        for key in MATCHED_KEYS:
            entry[key] = mean_std([None if c is None else c.values[key] for c in crossings])
        entry["per_seed"] = [None if c is None else {"step": c.step, **c.values}
                             for c in crossings]
        out[name] = entry
    return out


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
    variant, base = label(name), label(entry["base"])
    target = entry["base_final_train_loss"]
    if target is None:
        return f"{variant} against {base}: the base's final train loss is unknown"
    where = (f"{base}'s final train loss ({target:.4f}, at step {entry['base_steps']}, mean over "
             "seeds)")
    if entry["steps"] is None:
        return (f"{variant} did not reach {where} at any tracked step: no speed-up over {base} "
                "here")
    speedup = entry["speedup"]
    tail = (f", {speedup:.2f}x fewer steps than {base}" if speedup is not None
            else ", already at its first record")
    return f"{variant} reached {where} at step {entry['steps']}{tail}"
