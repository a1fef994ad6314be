"""Which likelihood a loss function is the negative log of.

The Gauss-Newton matrix needs only the loss, but the Fisher needs the model's predictive
distribution, which the loss implies:

* cross-entropy on logits :math:`f` is :math:`-\\log p(y \\mid f)` for the categorical
  distribution :math:`p = \\operatorname{softmax}(f)`;
* the squared error :math:`(f - y)^2` is, up to a constant, :math:`-\\log p(y \\mid f)` for the
  Gaussian :math:`\\mathcal N(f, \\tfrac12)`.

For cross-entropy the class dimension is the last one: outputs of shape ``(N, ..., C)`` with
targets ``(N, ...)`` (token models) are read as ``(-1, C)`` rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from samhess._validation import check_choice

LOSS_KINDS = ("cross_entropy", "mse")


def detect_loss_kind(loss_fn: Callable, loss_kind: str | None = None) -> str:
    """Return ``"cross_entropy"`` or ``"mse"`` for ``loss_fn``.

    Args:
        loss_fn: the batch-mean loss, ``loss_fn(outputs, targets)``.
        loss_kind: an explicit answer, which wins over detection (for custom losses).

    Raises:
        ValueError: if ``loss_kind`` is not a known kind, if ``loss_fn`` is an ``nn.Module`` loss
            that does not average (``reduction != "mean"``), or if the kind cannot be detected.
    """
    if loss_kind is not None:
        return check_choice("loss_kind", loss_kind, LOSS_KINDS)
    target = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    if isinstance(target, (nn.CrossEntropyLoss, nn.MSELoss)):
        if target.reduction != "mean":
            raise ValueError(
                f"loss_fn must return the batch mean, got reduction={target.reduction!r}"
            )
        return "cross_entropy" if isinstance(target, nn.CrossEntropyLoss) else "mse"
    if target is F.cross_entropy:
        return "cross_entropy"
    if target is F.mse_loss:
        return "mse"
    raise ValueError(
        f"cannot tell which likelihood loss_fn={loss_fn!r} belongs to; pass "
        f"loss_kind={LOSS_KINDS[0]!r} or {LOSS_KINDS[1]!r}"
    )


def as_rows(outputs: torch.Tensor, loss_kind: str) -> torch.Tensor:
    """Outputs as the ``(M, d)`` rows the likelihood factorizes over.

    Cross-entropy: one row of ``C`` logits per prediction (``(N, ..., C) -> (-1, C)``). Squared
    error: every output entry is an independent Gaussian, one row of width 1 each.
    """
    if loss_kind == "cross_entropy":
        return outputs.reshape(-1, outputs.shape[-1])
    return outputs.reshape(-1, 1)


def sample_targets(
    outputs: torch.Tensor, loss_kind: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw targets from the model's predictive distribution at ``outputs``.

    Cross-entropy: :math:`\\hat y \\sim \\operatorname{Categorical}(\\operatorname{softmax}(f))`,
    shaped like ``outputs.shape[:-1]``. Squared error: :math:`\\hat y = f + \\varepsilon`,
    :math:`\\varepsilon \\sim \\mathcal N(0, \\tfrac12)`, shaped like ``outputs``.
    """
    outputs = outputs.detach()
    if loss_kind == "cross_entropy":
        probabilities = torch.softmax(as_rows(outputs, loss_kind), dim=-1)
        labels = torch.multinomial(probabilities, 1, generator=generator)
        return labels.reshape(outputs.shape[:-1])
    noise = torch.randn(
        outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device
    )
    return outputs + noise * 0.5**0.5


def negative_log_likelihood(
    outputs: torch.Tensor, targets: torch.Tensor, loss_kind: str, counted: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean over rows of the plain loss of ``loss_kind`` (no weights, no label smoothing).

    ``counted``, a boolean mask over the rows, restricts the mean to the rows it marks.
    """
    if loss_kind == "cross_entropy":
        rows, labels = as_rows(outputs, loss_kind), targets.reshape(-1)
        if counted is not None:
            rows, labels = rows[counted], labels[counted]
        return F.cross_entropy(rows, labels)
    return F.mse_loss(outputs, targets)


def output_gradients(
    outputs: torch.Tensor, targets: torch.Tensor, loss_kind: str
) -> torch.Tensor:
    """Per-row gradients :math:`r_m = \\nabla_{f_m} \\ell(f_m, y_m)` of the unaveraged loss, ``(M, d)``.

    Cross-entropy: :math:`r_m = \\operatorname{softmax}(f_m) - e_{y_m}`. Squared error:
    :math:`r_m = 2 (f_m - y_m)`.
    """
    rows = as_rows(outputs, loss_kind)
    if loss_kind == "cross_entropy":
        residual = torch.softmax(rows, dim=-1)
        return residual - F.one_hot(targets.reshape(-1), rows.shape[-1]).to(rows.dtype)
    return 2.0 * (rows - targets.reshape(-1, 1))
