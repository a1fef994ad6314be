"""``dense_hessian`` against central finite differences of the gradient, on the models it got wrong.

The gradient comes from one reverse pass of the test's own, so the reference shares no
second-order code with samhess: column :math:`j` is
:math:`(\\nabla L(w + h e_j) - \\nabla L(w - h e_j)) / 2h`, exact to :math:`O(h^2)`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from token_models import make_transformer, relative_error, token_batch

from samhess.curvature import TokenCrossEntropy, dense_hessian


def finite_difference_hessian(model, loss_fn, inputs, targets, step=1e-5):
    named = dict(model.named_parameters())
    sizes = [p.numel() for p in named.values()]
    point = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def gradient(flat):
        flat = flat.clone().requires_grad_(True)
        values = {n: c.view_as(p) for (n, p), c in zip(named.items(), torch.split(flat, sizes))}
        with sdpa_kernel(SDPBackend.MATH):
            outputs = functional_call(model, values, (), inputs)
        (grad,) = torch.autograd.grad(loss_fn(outputs, targets), flat)
        return grad

    columns = []
    for j in range(point.numel()):
        shift = torch.zeros_like(point)
        shift[j] = step
        columns.append((gradient(point + shift) - gradient(point - shift)) / (2 * step))
    return torch.stack(columns, dim=1)


class NormalizedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.norm, self.second = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.norm(self.first(x))))


def layer_norm_problem():
    torch.manual_seed(0)
    model = NormalizedMLP().double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=generator)
    return model, F.cross_entropy, {"x": x}, y


def tied_transformer_problem():
    inputs, targets = token_batch([6, 3, 5], seed=4)
    return make_transformer(seed=2), TokenCrossEntropy(), inputs, targets


@pytest.mark.parametrize("build", [layer_norm_problem, tied_transformer_problem], ids=["layernorm", "tied"])
def test_dense_hessian_equals_finite_differences_of_the_gradient(build):
    model, loss_fn, inputs, targets = build()
    reference = finite_difference_hessian(model, loss_fn, inputs, targets)
    reference = (reference + reference.T) / 2
    assert relative_error(dense_hessian(model, loss_fn, (inputs, targets)), reference) < 1e-7
