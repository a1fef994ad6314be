"""Multilayer perceptron on flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Nonlinearities by name; the teacher of the ``synthetic`` data set uses the same ones.
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Module):
    r"""Fully connected network on flattened inputs.

    .. math::  x \mapsto W_L \sigma(\cdots \sigma(W_1 x + b_1) \cdots) + b_L

    Inputs of any shape are flattened per example. The ``nn.Linear`` layers come in order, so a
    list of ``(weight, bias)`` pairs (e.g. the ``synthetic`` data set's teacher) loads into them
    one to one.

    Args:
        input_size: number of input features after flattening.
        output_size: number of outputs (classes or regression targets).
        hidden_sizes: widths of the hidden layers; empty gives a linear model.
        activation: ``"relu"``, ``"tanh"`` or ``"gelu"``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_sizes: Sequence[int] = (64, 32),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, output_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs):
        return self.layers(inputs)
