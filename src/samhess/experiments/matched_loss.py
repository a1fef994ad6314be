r"""Flatness at matched train loss: lambda_max and Tr(H) where runs reach the same loss.

Cross-entropy curvature shrinks with the loss (near an interpolating solution the Hessian's
Gauss-Newton part scales with the predicted probabilities' spread), so two optimizers compared
at their final steps, at different losses, are not compared like with like. This module reads a
quantity off a run's records at a given train loss :math:`L^*`:

* the crossing is the first tracked step whose train loss is at or below :math:`L^*`;
* between that record :math:`(s_1, L_1, q_1)` and the one before it :math:`(s_0, L_0, q_0)`
  (:math:`L_0 > L^* \ge L_1`), the quantity is interpolated linearly in :math:`\log L`
  (losses fall roughly exponentially), with weight
  :math:`t = (\log L_0 - \log L^*) / (\log L_0 - \log L_1)`:
  :math:`q = q_0 + t (q_1 - q_0)`, and the step likewise;
* the matched loss of a set of runs is the largest of their lowest recorded train losses, the
  lowest loss every run reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MATCHED_KEYS", "Crossing", "crossing", "matched_loss"]

#: The quantities read at the matched loss (record keys).
MATCHED_KEYS = ("lambda_max", "hessian_trace")


@dataclass(frozen=True)
class Crossing:
    """Where a run's train loss first reached a loss, and its quantities there."""

    step: float
    values: dict[str, float]


def _usable(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[Mapping[str, Any]]:
    usable = []
    for record in records:
        loss = record.get("train_loss")
        if loss is None or not loss > 0 or any(record.get(key) is None for key in keys):
            continue
        usable.append(record)
    return sorted(usable, key=lambda record: record["step"])


def crossing(records: Sequence[Mapping[str, Any]], loss: float,
             keys: Sequence[str] = MATCHED_KEYS) -> Crossing | None:
    """The step and the values of ``keys`` where the train loss first reaches ``loss``.

    Records without a positive train loss or without one of ``keys`` are left out.

    Returns:
        The :class:`Crossing`, or ``None`` when no record reaches ``loss``.
    """
    usable = _usable(records, keys)
    for index, record in enumerate(usable):
        if record["train_loss"] > loss:
            continue
        if index == 0:
            return Crossing(float(record["step"]), {key: float(record[key]) for key in keys})
        before = usable[index - 1]
        high, low = math.log(before["train_loss"]), math.log(record["train_loss"])
        weight = (high - math.log(loss)) / (high - low)

        def between(a: float, b: float) -> float:
            return float(a) + weight * (float(b) - float(a))

        return Crossing(between(before["step"], record["step"]),
                        {key: between(before[key], record[key]) for key in keys})
    return None


def matched_loss(runs: Sequence[Sequence[Mapping[str, Any]]],
                 keys: Sequence[str] = MATCHED_KEYS) -> float | None:
    """The lowest train loss every run reached: the largest of their lowest recorded losses.

    Args:
        runs: the records of each run.
        keys: only records holding these values count.

    Returns:
        The loss, or ``None`` when some run has no usable record.
    """
    lowest = []
    for records in runs:
        usable = _usable(records, keys)
        if not usable:
            return None
        lowest.append(min(record["train_loss"] for record in usable))
    return max(lowest) if lowest else None
