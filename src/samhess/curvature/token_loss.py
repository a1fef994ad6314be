"""Cross-entropy over tokens, the loss of sequence models, with padded positions left out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from samhess.curvature.logits import find_logits


class TokenCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy with the class dimension last, averaged over the positions that count.

    For logits :math:`f` of shape ``(..., V)`` and integer targets :math:`y` of shape ``(...)``,

    .. math::

        L = \\frac{1}{|\\mathcal T|} \\sum_{t \\in \\mathcal T} -\\log
            \\operatorname{softmax}(f_t)_{y_t}, \\qquad
        \\mathcal T = \\{t : y_t \\ne \\text{ignore\\_index}\\},

    the mean over the non-ignored positions (padding, prompt tokens), as ``nn.CrossEntropyLoss``
    computes it on the flattened ``(-1, V)`` logits. ``nn.CrossEntropyLoss`` itself wants the
    classes in dimension 1; sequence models put them last. The first argument may be the logits
    or the model's outputs, from which the logits are taken as
    :func:`samhess.curvature.logits.find_logits` takes them (``outputs["logits"]``,
    ``outputs.logits``), so that ``loss_fn(outputs, targets)`` needs no wrapper for a model that
    returns a mapping or an object such as a Hugging Face ``ModelOutput``.

    A causal language model predicts token :math:`t + 1` at position :math:`t`: its targets are
    the input ids shifted left by one, with ``ignore_index`` at the last position and at padding.

    The curvature operators know this loss's units: over a loader they weight each batch by its
    count :math:`|\\mathcal T|` of non-ignored targets (by the sum of the class weights at those
    targets when ``weight`` is given), so several batches give the operator of their
    concatenation however the padding falls (:mod:`samhess.curvature.units`).

    Args:
        ignore_index: the target value of positions left out of the loss.
        weight: optional class weights ``(V,)``; the mean is then weighted by them.
        label_smoothing: as for ``nn.CrossEntropyLoss``.
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"`` (per-position losses shaped
            like the targets); the curvature operators need ``"mean"``.

    Example:
        >>> loss_fn = TokenCrossEntropy()
        >>> logits, targets = torch.randn(2, 5, 7), torch.randint(7, (2, 5))
        >>> targets[:, 3:] = -100  # padding
        >>> loss_fn(logits, targets).shape
        torch.Size([])
    """

    def __init__(
        self,
        ignore_index: int = -100,
        *,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )

    def forward(self, input: Any, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            input = find_logits(input)
        if input.shape[:-1] != target.shape:
            raise ValueError(
                f"logits of shape {tuple(input.shape)} need targets of shape "
                f"{tuple(input.shape[:-1])}, got {tuple(target.shape)}"
            )
        loss = super().forward(input.reshape(-1, input.shape[-1]), target.reshape(-1))
        return loss.reshape(target.shape) if self.reduction == "none" else loss
