"""SAM's second-order gain: exact on a cubic, the third derivative against finite differences.

On L(w) = sum_i a_i w_i^2 / 2 + b_i w_i^3 / 6 the fourth derivative vanishes, so with e = c g
the gradient at w + e is g + c H g + c^2/2 grad^3 L[g, g] exactly, with H = diag(a + b w) and
grad^3 L[u, u] = b u^2: along e_i the gain is 1 + c H_ii + c^2/2 b_i g_i, no remainder.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from samhess.analysis import second_order_gains, third_derivative
from samhess.curvature import HessianOperator, eigenpairs

A = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
B = torch.tensor([3.0, -2.0, 1.5, 4.0, -1.0], dtype=torch.float64)
START = torch.tensor([0.7, -0.4, 0.9, 0.3, -1.2], dtype=torch.float64)


class Coordinates(nn.Module):
    """Outputs its own parameter vector."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(START.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        del inputs
        return self.w


def cubic(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    del targets
    return (A * outputs**2 / 2 + B * outputs**3 / 6).sum()


BATCH = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def test_third_derivative_of_a_cubic():
    u = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(third_derivative(Coordinates(), cubic, BATCH, u), B * u**2,
                               rtol=1e-14, atol=0)
    # the Hessian and third derivative of a quadratic: no graph left, zeros
    quadratic = third_derivative(Coordinates(), lambda out, _: (A * out**2).sum(), BATCH, u)
    assert torch.equal(quadratic, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["sam", "usam"])
def test_second_order_gain_is_exact_on_a_cubic(mode):
    model = Coordinates()
    w = START
    g = A * w + B * w**2 / 2
    hessian = A + B * w
    rho = 0.3
    c = rho / float(g.norm()) if mode == "sam" else rho
    before = model.w.detach().clone()
    result = second_order_gains(model, cubic, BATCH, rho, torch.eye(5, dtype=torch.float64),
                                mode=mode)
    assert torch.equal(model.w.detach(), before)
    expected_first = 1 + c * hessian
    expected_term = 0.5 * c**2 * B * g
    assert result.first_order == pytest.approx(expected_first.tolist(), rel=1e-12)
    assert result.second_order_terms == pytest.approx(expected_term.tolist(), rel=1e-12)
    assert result.measured == pytest.approx((expected_first + expected_term).tolist(), rel=1e-12)
    assert result.second_order == pytest.approx(result.measured, rel=1e-12)
    assert result.gradient_cosines == pytest.approx((g / g.norm()).tolist(), rel=1e-12)
    assert result.grad_norm == pytest.approx(float(g.norm()), rel=1e-14)
    json.dumps(result.to_dict(), allow_nan=False)


def test_third_derivative_against_finite_differences(digits_mlp, digits_batch,
                                                    flat_loss_function):
    """grad^3 L[u, u] = d^2/dt^2 grad L(w + t u) at 0, by central differences (error O(t^2))
    of gradients from torch.func, a path independent of the library's."""
    model, loss_fn = digits_mlp
    loss = flat_loss_function(model, loss_fn, digits_batch)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    u = torch.randn(w.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm()
    gradient = torch.func.grad(loss)
    t = 1e-3
    finite = (gradient(w + t * u) - 2 * gradient(w) + gradient(w - t * u)) / t**2
    exact = third_derivative(model, loss_fn, digits_batch, u)
    assert float((exact - finite).norm() / exact.norm()) < 1e-5


def test_third_derivative_through_layer_norm_against_finite_differences(flat_loss_function):
    """Through nn.LayerNorm, whose fused kernel has a wrong second derivative (35% off here
    without samhess's formula in its place), against central differences of first-order
    gradients, which the fused kernel gets right; the model's layer_norm is untouched after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():  # an affine part away from its (1, 0) initialization
        model[1].weight.add_(0.3 * torch.randn(6, dtype=torch.float64))
        model[1].bias.add_(0.3 * torch.randn(6, dtype=torch.float64))
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 5, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (8,), generator=generator))
    loss_fn = nn.functional.cross_entropy
    loss = flat_loss_function(model, loss_fn, batch)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    u = torch.randn(w.numel(), generator=generator, dtype=torch.float64)
    u = u / u.norm()
    gradient = torch.func.grad(loss)
    t = 1e-3
    finite = (gradient(w + t * u) - 2 * gradient(w) + gradient(w - t * u)) / t**2
    fused = nn.functional.layer_norm
    exact = third_derivative(model, loss_fn, batch, u)
    assert nn.functional.layer_norm is fused
    assert float((exact - finite).norm() / exact.norm()) < 1e-5


def test_remainders_fall_like_rho_squared_and_cubed_on_the_digits_mlp(digits_mlp, digits_batch):
    """Along the top-5 eigenvectors of the batch Hessian, between rho = 0.01 and 0.03, the
    first-order gain's error grows like rho^2 and the second-order one's like rho^3, and at
    rho = 0.01 the second-order error is under a third of the first-order one everywhere."""
    model, loss_fn = digits_mlp
    top = eigenpairs(HessianOperator(model, loss_fn, digits_batch), 5, which="largest", seed=0)
    errors = {}
    for rho in (0.01, 0.03):
        result = second_order_gains(model, loss_fn, digits_batch, rho, top)
        measured = torch.tensor(result.measured, dtype=torch.float64)
        errors[rho] = [(measured - torch.tensor(result.first_order, dtype=torch.float64)).abs(),
                       (measured - torch.tensor(result.second_order, dtype=torch.float64)).abs()]
    assert result.eigenvalues == pytest.approx(top.eigenvalues.tolist())
    first_slope = torch.log(errors[0.03][0] / errors[0.01][0]) / math.log(3)
    second_slope = torch.log(errors[0.03][1] / errors[0.01][1]) / math.log(3)
    print(f"\nfitted slopes of the gain errors against rho over the top-5 eigenvectors: first "
          f"order {[round(x, 2) for x in first_slope.tolist()]}, second order "
          f"{[round(x, 2) for x in second_slope.tolist()]}")
    assert bool(((first_slope > 1.7) & (first_slope < 2.3)).all()), first_slope
    assert bool(((second_slope > 2.6) & (second_slope < 3.9)).all()), second_slope
    assert bool((errors[0.01][1] < errors[0.01][0] / 3).all())


def test_bad_arguments():
    model = Coordinates()
    with pytest.raises(ValueError, match=r"direction must be a flat tensor of 5 entries, got \(4,\)"):
        third_derivative(model, cubic, BATCH, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="rho must be > 0, got 0.0"):
        second_order_gains(model, cubic, BATCH, 0.0, torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode must be one of"):
        second_order_gains(model, cubic, BATCH, 0.1, torch.eye(5, dtype=torch.float64),
                           mode="asam")
    with torch.no_grad():
        model.w.zero_()
    with pytest.raises(ValueError, match="the gradient is zero"):
        second_order_gains(model, cubic, BATCH, 0.1, torch.eye(5, dtype=torch.float64))
    assert math.isfinite(float(third_derivative(model, cubic, BATCH, torch.ones(5)).sum()))
