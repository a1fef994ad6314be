"""Shared fixtures for the optimizer tests: a float64 quadratic with a closed-form gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


class Quadratic(nn.Module):
    """L(w) = 1/2 w^T A w over w = concat(a.flatten(), b), two parameter tensors."""

    def __init__(self, matrix: np.ndarray, start: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.tensor(matrix, dtype=torch.float64))
        start = torch.tensor(start, dtype=torch.float64)
        self.a = nn.Parameter(start[:4].reshape(2, 2).clone())
        self.b = nn.Parameter(start[4:].clone())

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a.reshape(-1), self.b])

    def forward(self) -> torch.Tensor:
        w = self.flat()
        return 0.5 * w @ self.matrix @ w


@pytest.fixture
def quadratic_problem():
    """(A, w0): a fixed SPD 7x7 matrix with spread eigenvalues and a start point without zeros."""
    rng = np.random.default_rng(1234)
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    matrix = q @ np.diag([0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 20.0]) @ q.T
    start = rng.uniform(0.5, 1.5, size=7) * rng.choice([-1.0, 1.0], size=7)
    return matrix, start


class ReferenceUpdates:
    """Textbook updates in numpy float64, written from the papers' and torch docs' formulas."""

    @staticmethod
    def perturbation(w, g, rho, adaptive, normalize):
        """e = rho T^2 g / ||T g|| (normalize) or rho T^2 g, T = |w| (adaptive) or 1."""
        t = np.abs(w) if adaptive else np.ones_like(w)
        e = rho * t * t * g
        if normalize:
            norm = np.linalg.norm(t * g)
            e = e / norm if norm > 0 else np.zeros_like(w)
        return e

    @staticmethod
    def sgd(w, g, state, lr, momentum=0.0, weight_decay=0.0):
        d = g + weight_decay * w
        if momentum:
            state["buf"] = d.copy() if "buf" not in state else momentum * state["buf"] + d
            d = state["buf"]
        return w - lr * d

    @staticmethod
    def adamw(w, g, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        b1, b2 = betas
        t = state["t"] = state.get("t", 0) + 1
        state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
        state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
        m_hat = state["m"] / (1 - b1**t)
        v_hat = state["v"] / (1 - b2**t)
        return w * (1 - lr * weight_decay) - lr * m_hat / (np.sqrt(v_hat) + eps)


@pytest.fixture
def reference():
    return ReferenceUpdates


@pytest.fixture
def make_quadratic(quadratic_problem):
    matrix, start = quadratic_problem

    def build():
        return Quadratic(matrix, start)

    return build
