"""Small float64 models and independent dense references for the curvature tests.

References are built with ``torch.autograd.functional`` (reverse mode, row by row) on a function
of the flat parameter vector, a different path from the operators' products.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class WithUnusedParameter(nn.Module):
    """An MLP that owns a parameter its forward pass never reads."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 7)
        self.unused = nn.Parameter(torch.randn(4))
        self.second = nn.Linear(7, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(inputs)))


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def make_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 5, 5)),
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(27, 3),
    ).double()
    batch_norm = model[2]
    batch_norm.running_mean.uniform_(-0.5, 0.5)
    batch_norm.running_var.uniform_(0.5, 2.0)
    batch_norm.weight.data.uniform_(0.5, 1.5)
    batch_norm.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def make_unused() -> nn.Module:
    torch.manual_seed(2)
    return WithUnusedParameter().double()


MODELS = {"mlp": (make_mlp, 5), "cnn": (make_cnn, 25), "unused": (make_unused, 5)}


def make_batch(num_inputs: int, size: int = 24, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, num_inputs, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (size,), generator=generator)
    return inputs, targets


def loss_of_flat(model, loss_fn, inputs, targets, params=None):
    """The batch loss as a function of the flat vector of ``params`` (default: all trainable)."""
    named = dict(model.named_parameters())
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    names = [next(n for n, q in named.items() if q is p) for p in params]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        values = {n: chunk.view(shape) for n, chunk, shape in zip(names, torch.split(flat, sizes), shapes)}
        return loss_fn(functional_call(model, values, (inputs,)), targets)

    point = torch.cat([p.detach().reshape(-1) for p in params])
    return loss, point


def reference_hessian(model, loss_fn, inputs, targets, params=None) -> torch.Tensor:
    """Dense Hessian by ``torch.autograd.functional.hessian`` (model in eval mode)."""
    training = model.training
    model.eval()
    try:
        loss, point = loss_of_flat(model, loss_fn, inputs, targets, params)
        return torch.autograd.functional.hessian(loss, point)
    finally:
        model.train(training)


def reference_ggn(model, loss_fn, inputs, targets) -> torch.Tensor:
    """Dense :math:`J^T \\nabla^2_f L J` from the full Jacobian and the loss Hessian in the outputs."""
    training = model.training
    model.eval()
    try:
        named = dict(model.named_parameters())
        names = list(named)
        sizes = [p.numel() for p in named.values()]
        shapes = [p.shape for p in named.values()]

        def outputs_of(flat):
            values = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
            return functional_call(model, values, (inputs,))

        point = torch.cat([p.detach().reshape(-1) for p in named.values()])
        outputs = outputs_of(point).detach()
        jacobian = torch.autograd.functional.jacobian(outputs_of, point).reshape(outputs.numel(), -1)
        loss_hessian = torch.autograd.functional.hessian(
            lambda o: loss_fn(o.reshape(outputs.shape), targets), outputs.reshape(-1)
        )
        return jacobian.T @ loss_hessian @ jacobian
    finally:
        model.train(training)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


MODEL_NAMES = sorted(MODELS)


def build_problem(name: str):
    """``(model, loss_fn, batch)`` for one of :data:`MODEL_NAMES`, cross-entropy loss."""
    build, num_inputs = MODELS[name]
    return build(), nn.CrossEntropyLoss(), make_batch(num_inputs)
