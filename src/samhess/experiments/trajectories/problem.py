r"""The over-parameterized problem the experiments train on.

The first ``examples`` digits of the training split (scikit-learn's 8x8 digits, standardized as
``samhess run`` reads them, :func:`samhess.experiments.data.load_dataset`), regressed with the
mean squared error onto their one-hot labels by a tanh MLP ``64-width-10``
(:mod:`samhess.experiments.models`), in float64:

.. math::

    L(w) = \frac{1}{10\,n} \sum_{i=1}^{n} \lVert f_w(x_i) - e_{y_i} \rVert^2 .

With the default 128 examples and width 32 the model has 2,410 parameters for 1,280 equations,
so the zero-loss set is a manifold of dimension at least 1,130: the setting of Wen, Ma & Li
(ICLR 2023), where the implicit bias of SAM is a flow along that manifold. The model is small
enough that every record's Hessian trace is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Problem", "build_problem"]

_CLASSES = 10


@dataclass(frozen=True)
class Problem:
    """The data, the loss and the model shape of every trajectory of an experiment.

    Attributes:
        inputs: ``(n, 1, 8, 8)`` float64 images.
        targets: ``(n, 10)`` one-hot float64 targets.
        width: the hidden width.
        seed: the seed of the split and the initial weights.
        loss_fn: the mean squared error (mean over examples and outputs).
        source: the digits as loaded (the model registry shapes the MLP from it).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    width: int
    seed: int
    loss_fn: nn.Module
    source: Any

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples as one batch."""
        return self.inputs, self.targets

    @property
    def examples(self) -> int:
        return int(self.inputs.shape[0])

    def new_model(self) -> nn.Module:
        """The model at its seeded initialization, in float64."""
        from samhess.experiments.models import build_model

        return build_model("mlp", self.source, seed=self.seed, hidden_sizes=(self.width,),
                           activation="tanh").double()


def build_problem(examples: int, width: int, seed: int) -> Problem:
    """The problem of ``examples`` digits and a tanh MLP of hidden width ``width``."""
    from samhess.experiments.data import load_dataset

    data = load_dataset("digits", seed=seed, limit=examples)
    inputs = data.train_inputs.to(torch.float64)
    targets = nn.functional.one_hot(data.train_targets, _CLASSES).to(torch.float64)
    return Problem(inputs=inputs, targets=targets, width=width, seed=seed, loss_fn=nn.MSELoss(),
                   source=data)
