r"""Teacher-student regression: a fixed random network labels Gaussian inputs, plus noise.

A teacher MLP :math:`f_{\theta^*}` with the architecture of the default student (``mlp`` on this
data set) maps inputs :math:`x \sim \mathcal N(0, I_d)` to targets

.. math::  y = f_{\theta^*}(x) + \sigma \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I_m).

Because the student can represent the teacher exactly, the optimum is known: at
:math:`\theta = \theta^*` the mean squared error (``nn.MSELoss``) on the training set equals the
realized noise power :math:`\frac{1}{Nm}\sum \sigma^2 \varepsilon_{ij}^2` (recorded as
``metadata["teacher_train_loss"]``; its expectation is :math:`\sigma^2`), and no predictor has an
expected test loss below :math:`\sigma^2`, which the teacher attains. A student may still go
below ``teacher_train_loss`` on the training set by fitting the noise: the gap is overfitting.

This is the classic student-teacher setting of statistical-mechanics learning theory.

Reference:
    H. S. Seung, H. Sompolinsky and N. Tishby, "Statistical mechanics of learning from examples",
    Physical Review A 45(8), 1992. https://doi.org/10.1103/PhysRevA.45.6056
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from samhess._validation import check_choice, check_int_at_least, check_nonnegative

from ..models.mlp import ACTIVATIONS
from .preprocessing import check_limit, first_rows
from .task import TaskData


def teacher_parameters(
    input_dim: int, hidden_sizes: Sequence[int], output_dim: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""The teacher's ``(weight, bias)`` per layer, drawn from ``torch.Generator`` seeded ``seed``.

    Every entry of layer :math:`l` is :math:`\mathcal N(0, 1/\text{fan\_in}_l)`, so that each
    pre-activation has unit variance for unit-variance inputs. Weights are ``(out, in)`` like
    ``nn.Linear.weight``: loading them in order into the student's ``nn.Linear`` layers gives the
    teacher exactly.
    """
    generator = torch.Generator().manual_seed(seed)
    return _draw_teacher([input_dim, *hidden_sizes, output_dim], generator)


def _draw_teacher(
    sizes: Sequence[int], generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        scale = fan_in**-0.5
        weight = torch.randn(fan_out, fan_in, generator=generator) * scale
        bias = torch.randn(fan_out, generator=generator) * scale
        layers.append((weight, bias))
    return layers


def teacher_forward(
    layers: list[tuple[torch.Tensor, torch.Tensor]], inputs: torch.Tensor, activation: str
) -> torch.Tensor:
    """The teacher network's output: affine layers with ``activation`` between them."""
    # The student's own nonlinearity, so that loading the teacher into the student is exact.
    act = ACTIVATIONS[activation]()
    hidden = inputs
    for index, (weight, bias) in enumerate(layers):
        hidden = F.linear(hidden, weight, bias)
        if index < len(layers) - 1:
            hidden = act(hidden)
    return hidden


def load_synthetic(
    *,
    data_dir=None,
    seed: int = 0,
    num_train: int = 512,
    num_test: int = 512,
    input_dim: int = 16,
    hidden_sizes: Sequence[int] = (32,),
    output_dim: int = 1,
    activation: str = "tanh",
    noise: float = 0.1,
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    r"""Teacher-student regression data with a known optimum (see the module docstring).

    One ``torch.Generator`` seeded ``seed`` draws, in order: the teacher's parameters, the train
    inputs, the test inputs, the train noise :math:`\varepsilon`, the test noise. The noise draws do
    not depend on ``noise``, so two data sets differing only in ``noise`` have the same inputs and
    teacher outputs and targets differing by exactly the scaled noise.

    Args:
        data_dir: unused (the data are generated).
        seed: decides the teacher, the inputs and the noise.
        num_train: training examples.
        num_test: test examples.
        input_dim: dimension :math:`d` of the inputs.
        hidden_sizes: widths of the teacher's hidden layers (also the default student's).
        output_dim: dimension :math:`m` of the targets.
        activation: the teacher's nonlinearity, one of ``"tanh"``, ``"relu"``, ``"gelu"``.
        noise: standard deviation :math:`\sigma` of the label noise (>= 0).
        limit: keep only the first ``limit`` training examples.
        test_limit: keep only the first ``test_limit`` test examples.
    """
    del data_dir
    num_train = check_int_at_least("num_train", num_train, 1)
    num_test = check_int_at_least("num_test", num_test, 1)
    input_dim = check_int_at_least("input_dim", input_dim, 1)
    output_dim = check_int_at_least("output_dim", output_dim, 1)
    hidden_sizes = tuple(check_int_at_least("hidden_sizes", h, 1) for h in hidden_sizes)
    activation = check_choice("activation", activation, tuple(ACTIVATIONS))
    noise = check_nonnegative("noise", noise)
    limit = check_limit("limit", limit)
    test_limit = check_limit("test_limit", test_limit)

    # One stream for teacher, inputs and noise, so that one seed fixes everything.
    generator = torch.Generator().manual_seed(seed)
    layers = _draw_teacher([input_dim, *hidden_sizes, output_dim], generator)
    train_x = torch.randn(num_train, input_dim, generator=generator)
    test_x = torch.randn(num_test, input_dim, generator=generator)
    train_eps = torch.randn(num_train, output_dim, generator=generator)
    test_eps = torch.randn(num_test, output_dim, generator=generator)

    train_x, train_eps = first_rows(train_x, limit), first_rows(train_eps, limit)
    test_x, test_eps = first_rows(test_x, test_limit), first_rows(test_eps, test_limit)
    train_y = teacher_forward(layers, train_x, activation) + noise * train_eps
    test_y = teacher_forward(layers, test_x, activation) + noise * test_eps

    def noise_power(eps: torch.Tensor) -> float:
        return float((noise * eps.double()).square().mean())

    return TaskData(
        name="synthetic",
        kind="regression",
        train_inputs=train_x,
        train_targets=train_y,
        test_inputs=test_x,
        test_targets=test_y,
        input_shape=(input_dim,),
        num_outputs=output_dim,
        metadata={
            "source": "teacher-student regression (samhess.experiments.datasets.synthetic)",
            "teacher": {
                "input_dim": input_dim,
                "hidden_sizes": list(hidden_sizes),
                "output_dim": output_dim,
                "activation": activation,
                "seed": seed,
            },
            "noise": noise,
            "noise_variance": noise**2,
            "teacher_train_loss": noise_power(train_eps),
            "teacher_test_loss": noise_power(test_eps),
            "model_defaults": {
                "mlp": {"hidden_sizes": list(hidden_sizes), "activation": activation}
            },
        },
    )


def synthetic_teacher(data: TaskData) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(weight, bias)`` layers of the teacher behind a ``"synthetic"`` :class:`TaskData`."""
    if data.name != "synthetic" or "teacher" not in data.metadata:
        raise ValueError(f"data must come from the 'synthetic' data set, got {data.name!r}")
    spec = data.metadata["teacher"]
    return teacher_parameters(
        spec["input_dim"], spec["hidden_sizes"], spec["output_dim"], spec["seed"]
    )
