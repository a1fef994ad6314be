"""taylor_check and trace_identity_check against closed forms and a dense Hessian from torch.func."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from samhess.analysis import plot_taylor, taylor_check, trace_identity_check
from samhess.analysis.taylor import log_log_slope
from samhess.optim import ASAM, IRE, SAM, USAM

RHOS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def test_quadratic_expansions_are_exact(quadratic):
    """On 1/2 w^T A w the remainders vanish: the errors are rounding, far below the corrections."""
    model, loss_fn, batch, matrix, _, _ = quadratic
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = matrix @ w
    usam = USAM(model.parameters(), torch.optim.SGD, rho=1.0, lr=0.1)
    for perturbation in (None, usam):
        check = taylor_check(model, loss_fn, batch, RHOS, perturbation)
        for rho, abs_error, correction, quadratic_term in zip(
                check.rhos, check.grad_abs_error, check.grad_correction_norms,
                check.quadratic_terms):
            e = rho * g / g.norm() if perturbation is None else rho * g
            assert correction == pytest.approx(float((matrix @ e).norm()), rel=1e-9)
            assert abs_error <= 1e-12 * correction
            assert quadratic_term == pytest.approx(float(0.5 * e @ matrix @ e), rel=1e-12)
        assert max(check.grad_rel_error) < 1e-10
        assert max(check.loss_rel_error) < 1e-8
    assert check.rayleigh_quotient == pytest.approx(float(g @ matrix @ g / (g @ g)), rel=1e-12)
    assert check.grad_norm == pytest.approx(float(g.norm()), rel=1e-14)


def test_errors_equal_dense_hessian_computation(trained_digits_mlp, digits_batch, tmp_path,
                                                flat_loss_function, batch_hessian):
    """The reported errors equal those computed with torch.func (dense Hessian, functional
    gradient at w + e), and the gradient remainder falls like rho (order ~ 1)."""
    model, loss_fn = trained_digits_mlp
    before = [p.detach().clone() for p in model.parameters()]
    check = taylor_check(model, loss_fn, digits_batch, RHOS)

    loss = flat_loss_function(model, loss_fn, digits_batch)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.func.grad(loss)(w)
    hessian = batch_hessian[0]
    loss_w = float(loss(w))
    grad_errors, loss_errors = [], []
    for rho in RHOS:
        e = rho * g / g.norm()
        g_e = torch.func.grad(loss)(w + e)
        grad_errors.append(float((g_e - g - hessian @ e).norm() / (g_e - g).norm()))
        loss_e = float(loss(w + e))
        quadratic = float(e @ g + 0.5 * e @ hessian @ e)
        loss_errors.append(abs(loss_e - loss_w - quadratic) / abs(loss_e - loss_w - float(e @ g)))

    np.testing.assert_allclose(check.grad_rel_error, grad_errors, rtol=1e-6)
    np.testing.assert_allclose(check.loss_rel_error, loss_errors, rtol=1e-5)
    assert check.order == pytest.approx(np.polyfit(np.log(RHOS), np.log(grad_errors), 1)[0],
                                        rel=1e-6)
    assert 0.8 <= check.order <= 1.2
    # The loss remainder is third order against a second-order correction: it falls at least
    # like rho (faster where the third derivative along g happens to be small).
    assert check.loss_order >= 0.8
    assert check.loss_rel_error[0] < 1e-2
    assert check.rayleigh_quotient == pytest.approx(float(g @ hessian @ g / (g @ g)), rel=1e-9)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())

    payload = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    assert payload["rhos"] == RHOS and payload["perturbation"] == "SAM: rho g / ||g||"
    path = plot_taylor(check, tmp_path / "taylor.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_log_slope():
    xs = [1e-3, 1e-2, 1e-1]
    assert log_log_slope(xs, [2 * x**2 for x in xs]) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(log_log_slope(xs, [0.0, 0.0, 1.0]))


def test_bad_arguments(quadratic):
    model, loss_fn, batch, _, _, _ = quadratic
    with pytest.raises(TypeError, match="perturbation must be"):
        taylor_check(model, loss_fn, batch, RHOS, "asam")
    with pytest.raises(TypeError, match="first_step"):
        taylor_check(model, loss_fn, batch, RHOS, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="must return a flat tensor"):
        taylor_check(model, loss_fn, batch, RHOS, lambda g, rho: rho)
    with pytest.raises(ValueError, match=r"rhos\[1\] must be > 0"):
        taylor_check(model, loss_fn, batch, [0.1, -0.1])
    with pytest.raises(ValueError, match="rhos must hold at least one"):
        taylor_check(model, loss_fn, batch, [])
    with pytest.raises(TypeError, match="rhos must be a sequence"):
        taylor_check(model, loss_fn, batch, 0.1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with pytest.raises(ValueError, match="gradient is zero"):
        taylor_check(model, loss_fn, batch, RHOS)


def test_trace_identity_on_quadratic(quadratic):
    """E e^T A e = sigma^2 Tr A: the Monte-Carlo mean lies within a few standard errors of the
    exact sigma^2 Tr A; SAM's quadratic form is the Rayleigh quotient, not Tr A / d."""
    model, loss_fn, batch, matrix, eigenvalues, _ = quadratic
    sigma = 0.3
    check = trace_identity_check(model, loss_fn, batch, sigma=sigma, num_samples=2000,
                                 trace_matvecs=60, seed=1)
    exact = sigma**2 * float(eigenvalues.sum())
    assert abs(check.monte_carlo_mean - exact) < 4 * check.monte_carlo_stderr
    # The standard error of e^T A e for Gaussian e is sigma^2 sqrt(2 sum lambda^2 / n).
    expected_stderr = sigma**2 * math.sqrt(2 * float((eigenvalues**2).sum()) / 2000)
    assert check.monte_carlo_stderr == pytest.approx(expected_stderr, rel=0.1)
    assert check.trace_estimate == pytest.approx(float(eigenvalues.sum()), rel=0.05)
    assert abs(check.z_score) < 4
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = matrix @ w
    assert check.rayleigh_quotient == pytest.approx(float(g @ matrix @ g / (g @ g)), rel=1e-12)
    assert check.mean_eigenvalue == pytest.approx(check.trace_estimate / 6, rel=1e-12)


def test_trace_identity_on_network(trained_digits_mlp, digits_batch, batch_hessian):
    model, loss_fn = trained_digits_mlp
    check = trace_identity_check(model, loss_fn, digits_batch, sigma=0.01, num_samples=96,
                                 trace_matvecs=60)
    exact = float(torch.trace(batch_hessian[0]))
    assert abs(check.monte_carlo_mean - 1e-4 * exact) < 4 * check.monte_carlo_stderr
    assert abs(check.z_score) < 4
    # SAM's direction sees far more curvature than the average direction does.
    assert check.rayleigh_quotient > 5 * check.mean_eigenvalue


def test_asam_perturbation_against_its_formula(quadratic):
    """ASAM's e = rho |w|^2 g / || |w| g ||, read off its first_step, makes the expansion exact on a
    quadratic: the correction equals A e, and the optimizer and weights are untouched."""
    model, loss_fn, batch, matrix, _, _ = quadratic
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = matrix @ w
    asam = IRE(ASAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1), kappa=1.0, gamma=0.5)
    rho_before = [group["rho"] for group in asam.param_groups]
    check = taylor_check(model, loss_fn, batch, RHOS, asam)
    assert check.perturbation == "IRE(ASAM(SGD))"
    for rho, correction, norm in zip(check.rhos, check.grad_correction_norms,
                                     check.perturbation_norms):
        e = rho * w.abs() ** 2 * g / (w.abs() * g).norm()
        assert norm == pytest.approx(float(e.norm()), rel=1e-12)
        assert correction == pytest.approx(float((matrix @ e).norm()), rel=1e-9)
    assert max(check.grad_rel_error) < 1e-10
    assert [group["rho"] for group in asam.param_groups] == rho_before
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), w)


def test_callable_perturbation_equals_sam_optimizer(trained_digits_mlp, digits_batch):
    """A callable giving SAM's e and a SAM optimizer give the same check, to rounding."""
    model, loss_fn = trained_digits_mlp
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def along_gradient(g, rho):
        return rho * g / g.norm()

    by_callable = taylor_check(model, loss_fn, digits_batch, RHOS, along_gradient)
    by_optimizer = taylor_check(model, loss_fn, digits_batch, RHOS, sam)
    assert by_callable.perturbation == "along_gradient"
    np.testing.assert_allclose(by_callable.grad_rel_error, by_optimizer.grad_rel_error, rtol=1e-7)
    np.testing.assert_allclose(by_callable.perturbation_norms, RHOS, rtol=1e-12)
