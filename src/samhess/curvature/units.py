"""What a loss averages over, and so how much each batch weighs in a mean over data.

A batch-mean loss is a weighted mean over its units (examples, tokens):
:math:`L_b = \\frac{1}{W_b}\\sum_{u \\in b} c_u \\ell_u` with :math:`W_b = \\sum_{u \\in b} c_u`.
The loss of the concatenated batches is then

.. math::

    L = \\frac{\\sum_b W_b L_b}{\\sum_b W_b},

and because every curvature quantity is linear in the loss, the operator over a loader equals
the operator on the concatenation exactly when batch :math:`b` is weighted by :math:`W_b`
(:func:`samhess.curvature.data.mean_over_data`). :func:`weight_rule` says what :math:`W_b` is:

* ``weight_of`` given: :math:`W_b` = ``weight_of(targets)``, for any loss whose mean is over
  something else than the examples;
* :class:`~samhess.curvature.TokenCrossEntropy`, any ``nn.CrossEntropyLoss`` and
  ``F.cross_entropy``, with integer targets: the number of targets that are not
  ``ignore_index`` (padding), or the sum of the class weights at them when the loss has class
  weights; with class-probability targets, the number of target positions;
* any other loss: the number of examples, ``targets.shape[0]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samhess.curvature.batches import describe
from samhess.curvature.token_loss import TokenCrossEntropy

__all__ = [
    "CrossEntropyOptions",
    "cross_entropy_options",
    "example_count",
    "weight_rule",
    "counted_rows",
]


@dataclass(frozen=True)
class CrossEntropyOptions:
    """What a cross-entropy loss averages over.

    Attributes:
        ignore_index: targets with this value are left out.
        class_weight: class weights ``(C,)``, or ``None``.
        class_last: whether the class dimension is the last one (:class:`TokenCrossEntropy`)
            rather than dimension 1 (``nn.CrossEntropyLoss``).
        reduction: the loss's reduction; only ``"mean"`` is a mean.
    """

    ignore_index: int
    class_weight: torch.Tensor | None
    class_last: bool
    reduction: str


def cross_entropy_options(loss_fn: Callable) -> CrossEntropyOptions | None:
    """The options of ``loss_fn`` if it is a cross-entropy samhess knows, else ``None``.

    Known: instances of ``nn.CrossEntropyLoss`` (:class:`TokenCrossEntropy` included) and
    ``F.cross_entropy``, bare or in a ``functools.partial`` with keyword options.
    """
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return CrossEntropyOptions(
            int(loss_fn.ignore_index),
            loss_fn.weight,
            isinstance(loss_fn, TokenCrossEntropy),
            loss_fn.reduction,
        )
    keywords: dict[str, Any] = {}
    target = loss_fn
    if isinstance(loss_fn, functools.partial) and not loss_fn.args:
        target, keywords = loss_fn.func, loss_fn.keywords
    if target is F.cross_entropy:
        return CrossEntropyOptions(
            int(keywords.get("ignore_index", -100)),
            keywords.get("weight"),
            False,
            keywords.get("reduction", "mean"),
        )
    return None


def example_count(targets: Any) -> float:
    """The number of examples, ``targets.shape[0]``: the default weight of a batch."""
    if not isinstance(targets, torch.Tensor) or targets.ndim == 0:
        raise TypeError(
            f"the targets are {describe(targets)}, which has no number of examples to weight the "
            "batch by; pass weight_of=lambda targets: <the number of units the loss averages "
            "over> (see samhess.curvature.units)"
        )
    return float(targets.shape[0])


def _cross_entropy_units(targets: Any, options: CrossEntropyOptions) -> float:
    if options.reduction != "mean":
        raise ValueError(
            f"loss_fn must return the batch mean to be averaged over batches, got "
            f"reduction={options.reduction!r}"
        )
    if not isinstance(targets, torch.Tensor):
        return example_count(targets)
    if targets.numel() == 0:
        return 0.0
    if targets.is_floating_point():  # class probabilities: the mean is over target positions
        classes = targets.shape[-1] if options.class_last else targets.shape[min(1, targets.ndim - 1)]
        return float(targets.numel() // max(int(classes), 1))
    counted = targets != options.ignore_index
    if options.class_weight is None:
        count = float(counted.sum())
    else:
        count = float(options.class_weight.to(targets.device)[targets[counted]].sum())
    if count <= 0:
        reason = "" if options.class_weight is None else " or a class of weight 0"
        raise ValueError(
            f"no target counts in the loss: every one of its {targets.numel()} targets is "
            f"ignore_index={options.ignore_index}{reason}"
        )
    return count


def _checked_weight(value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"weight_of(targets) must return a number, got {describe(value)}: {value!r}")
    weight = float(value)
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight_of(targets) must return a finite number > 0, got {value!r}")
    return weight


def weight_rule(loss_fn: Callable, weight_of: Callable[[Any], Any] | None = None) -> Callable[[Any], float]:
    """The function :math:`W_b` = ``rule(targets)`` that batches are weighted by (module docstring).

    A weight of 0 means an empty batch, which the mean skips; ``weight_of`` must return a finite
    number > 0.

    Raises:
        TypeError: if ``weight_of`` is given and not callable.
    """
    if weight_of is not None:
        if not callable(weight_of):
            raise TypeError(f"weight_of must be callable, got {describe(weight_of)}")
        return lambda targets: _checked_weight(weight_of(targets))
    options = cross_entropy_options(loss_fn)
    if options is not None:
        return functools.partial(_cross_entropy_units, options=options)
    return example_count


def counted_rows(loss_fn: Callable, targets: Any, num_rows: int) -> torch.Tensor | None:
    """Which of the ``num_rows`` prediction rows (class last) a cross-entropy loss counts.

    A boolean ``(num_rows,)`` mask that is ``False`` at targets equal to ``ignore_index``, for
    the cross-entropies of :func:`cross_entropy_options` with integer targets, one per row;
    ``None`` (every row counts) otherwise.
    """
    options = cross_entropy_options(loss_fn)
    if (
        options is None
        or not isinstance(targets, torch.Tensor)
        or targets.is_floating_point()
        or targets.numel() != num_rows
    ):
        return None
    mask = targets.reshape(-1) != options.ignore_index
    return None if bool(mask.all()) else mask
