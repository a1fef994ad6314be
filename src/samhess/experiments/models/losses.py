"""The loss that goes with each kind of task."""

from __future__ import annotations

import torch
from torch import nn

from ..datasets.task import TaskData


class TokenCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy with the class dimension last: logits ``(B, T, V)``, targets ``(B, T)``.

    ``nn.CrossEntropyLoss`` wants the classes in dimension 1; sequence models put them last. This
    flattens to ``(B * T, V)`` and ``(B * T,)``, so the mean runs over every token of the batch.
    All of ``nn.CrossEntropyLoss``'s options (``weight``, ``ignore_index``, ``label_smoothing``,
    ``reduction``) keep their meaning; with ``reduction="none"`` the result has the targets' shape.
    Plain ``(N, C)`` logits with ``(N,)`` targets give ordinary cross-entropy.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape[:-1] != target.shape:
            raise ValueError(
                f"logits of shape {tuple(input.shape)} need targets of shape "
                f"{tuple(input.shape[:-1])}, got {tuple(target.shape)}"
            )
        loss = super().forward(input.reshape(-1, input.shape[-1]), target.reshape(-1))
        return loss.reshape(target.shape) if self.reduction == "none" else loss


def loss_for(data: TaskData) -> nn.Module:
    """The training loss for ``data``: mean (token) cross-entropy or mean squared error.

    * ``"classification"``: ``nn.CrossEntropyLoss()``;
    * ``"language_model"``: :class:`TokenCrossEntropy` (a subclass of ``nn.CrossEntropyLoss``);
    * ``"regression"``: ``nn.MSELoss()``.
    """
    if data.kind == "classification":
        return nn.CrossEntropyLoss()
    if data.kind == "language_model":
        return TokenCrossEntropy()
    return nn.MSELoss()
