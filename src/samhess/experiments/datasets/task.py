"""The in-memory form every data set takes: :class:`TaskData`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from samhess._validation import check_choice

#: The three learning problems the experiment layer knows how to train and score.
TASK_KINDS = ("classification", "regression", "language_model")


@dataclass
class TaskData:
    """A data set held in memory as tensors, with what a model needs to know about it.

    Shapes, with ``N`` examples and per-example input shape ``input_shape``:

    * ``"classification"``: inputs ``(N, *input_shape)`` float32, targets ``(N,)`` int64 class
      indices in ``[0, num_outputs)``.
    * ``"regression"``: inputs float32, targets ``(N, num_outputs)`` float32.
    * ``"language_model"``: inputs ``(N, T)`` int64 token ids, targets ``(N, T)`` int64, the
      next token at every position (``targets[:, t] == inputs[:, t + 1]`` inside one window);
      ``input_shape == (T,)`` and ``num_outputs`` is the vocabulary size.

    Attributes:
        name: the data set's name as passed to :func:`samhess.experiments.data.load_dataset`.
        kind: one of :data:`TASK_KINDS`.
        train_inputs: training inputs.
        train_targets: training targets.
        test_inputs: held-out inputs.
        test_targets: held-out targets.
        input_shape: shape of one input example.
        num_outputs: number of classes, output dimension or vocabulary size.
        metadata: JSON-serializable facts about the data (source, normalization, split, options,
            vocabulary, ...), and optionally ``"model_defaults"``: ``{model_name: {option: value}}``
            that :func:`samhess.experiments.models.build_model` uses unless the caller overrides.
    """

    name: str
    kind: str
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    input_shape: tuple[int, ...]
    num_outputs: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, TASK_KINDS)
        self.input_shape = tuple(int(s) for s in self.input_shape)
        for split in ("train", "test"):
            inputs = getattr(self, f"{split}_inputs")
            targets = getattr(self, f"{split}_targets")
            if inputs.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"{split}_inputs holds {inputs.shape[0]} examples but {split}_targets holds "
                    f"{targets.shape[0]}"
                )
            if tuple(inputs.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"{split}_inputs has per-example shape {tuple(inputs.shape[1:])}, "
                    f"expected input_shape {self.input_shape}"
                )

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.train_inputs.shape[0])

    @property
    def num_test(self) -> int:
        """Number of held-out examples."""
        return int(self.test_inputs.shape[0])

    def describe(self) -> dict[str, Any]:
        """A JSON-serializable summary (no tensors), e.g. for a run's ``config.json``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "input_shape": list(self.input_shape),
            "num_outputs": self.num_outputs,
            "metadata": self.metadata,
        }
