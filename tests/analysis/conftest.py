"""Shared fixtures for the analysis tests: an exact quadratic and a trained digits MLP (float64).

The MLP uses tanh: the expansions under test assume a loss with continuous third derivatives,
and ReLU kinks crossed by the perturbation add an error of their own (measured separately in
``benchmarks/seed_validity.py``). The data and the training come from ``benchmarks/digits_mlp.py``,
so the tests and that benchmark measure the same network.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

# Tests run with ``--import-mode=importlib`` and benchmarks/ is not a package: load it by path.
_spec = importlib.util.spec_from_file_location(
    "digits_mlp", Path(__file__).resolve().parents[2] / "benchmarks" / "digits_mlp.py"
)
digits_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_source)


class ParameterVector(nn.Module):
    """A model whose output is its own parameter vector w = concat(a.flatten(), b)."""

    def __init__(self, start: np.ndarray) -> None:
        super().__init__()
        start = torch.tensor(start, dtype=torch.float64)
        self.a = nn.Parameter(start[:4].reshape(2, 2).clone())
        self.b = nn.Parameter(start[4:].clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        del inputs
        return torch.cat([self.a.reshape(-1), self.b])


class QuadraticLoss:
    """loss_fn(out, targets) = 1/2 out^T A out: the Hessian is A everywhere."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        del targets
        return 0.5 * outputs @ self.matrix @ outputs


@pytest.fixture
def quadratic():
    """(model, loss_fn, batch, A, eigenvalues, eigenvectors) with known spectrum, dim 6.

    The start point has a sizable component on every eigenvector, so no gain is a ratio of
    tiny numbers.
    """
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigenvalues = np.array([4.0, 2.5, 1.5, 0.7, 0.3, 0.1])
    matrix = q @ np.diag(eigenvalues) @ q.T
    start = q @ np.array([1.0, -0.8, 0.6, 1.2, -0.5, 0.9])
    model = ParameterVector(start)
    loss_fn = QuadraticLoss(torch.tensor(matrix))
    batch = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return (model, loss_fn, batch, torch.tensor(matrix), torch.tensor(eigenvalues),
            torch.tensor(q))


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, pixels scaled to [0, 1], float64 inputs and int64 labels."""
    return digits_source.scaled_digits()


@pytest.fixture(scope="session")
def trained_digits_mlp(digits):
    """An MLP 64-32-10 (tanh) trained by full-batch Adam on digits to a loss just below 0.1."""
    model, loss_fn, steps = digits_source.train_digits_mlp(digits, nn.Tanh, seed=0, max_steps=2000)
    assert steps < 2000, "the MLP did not reach a training loss below 0.1"
    return model, loss_fn


@pytest.fixture
def digits_mlp(trained_digits_mlp):
    """A private copy of the trained MLP, so a test may step it."""
    model, loss_fn = trained_digits_mlp
    return copy.deepcopy(model), loss_fn


@pytest.fixture(scope="session")
def digits_batch(digits):
    """128 digits drawn with a fixed seed."""
    inputs, labels = digits
    chosen = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(3))[:128]
    return inputs[chosen], labels[chosen]


def _flat_loss_function(model: nn.Module, loss_fn, batch):
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    inputs, targets = batch

    def loss(flat: torch.Tensor) -> torch.Tensor:
        tensors = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return loss_fn(functional_call(model, dict(zip(names, tensors)), (inputs,)), targets)

    return loss


@pytest.fixture(scope="session")
def flat_loss_function():
    """``make(model, loss_fn, batch)`` -> L(w) as a function of the flat parameter vector,
    through torch.func (independent of the library's in-place perturbation)."""
    return _flat_loss_function


@pytest.fixture(scope="session")
def batch_hessian(trained_digits_mlp, digits_batch):
    """The dense Hessian of the trained MLP on ``digits_batch`` from torch.func, with its
    eigendecomposition (eigenvalues ascending): an answer independent of samhess.curvature."""
    model, loss_fn = trained_digits_mlp
    loss = _flat_loss_function(model, loss_fn, digits_batch)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.func.hessian(loss)(w)
    hessian = 0.5 * (hessian + hessian.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    return hessian, eigenvalues, eigenvectors
