"""The loss that goes with each kind of task."""

from __future__ import annotations

from torch import nn

from samhess.curvature import TokenCrossEntropy

from ..datasets.task import TaskData

__all__ = ["TokenCrossEntropy", "loss_for"]


def loss_for(data: TaskData) -> nn.Module:
    """The training loss for ``data``: mean (token) cross-entropy or mean squared error.

    * ``"classification"``: ``nn.CrossEntropyLoss()``;
    * ``"language_model"``: :class:`samhess.curvature.TokenCrossEntropy` (a subclass of
      ``nn.CrossEntropyLoss``);
    * ``"regression"``: ``nn.MSELoss()``.
    """
    if data.kind == "classification":
        return nn.CrossEntropyLoss()
    if data.kind == "language_model":
        return TokenCrossEntropy()
    return nn.MSELoss()
