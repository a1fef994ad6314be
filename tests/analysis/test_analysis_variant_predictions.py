"""The SAM variants' registered first-order predictions against their measured steps on
L = 1/2 w^T A w, where grad L(w + e) = g + A e exactly, so every first-order form is exact.

The expected gains along the eigenvectors q_i are written here from the papers' updates, not
from the rules under test.
"""

from __future__ import annotations

import pytest
import torch

from samhess.analysis import directional_gains, measure_steps
from samhess.analysis.predictions import StepForm
from samhess.optim import BSAM, GSAM, MSAM, RST, WSAM, FriendlySAM, LookSAM

LR = 0.1
RHO = 0.05


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues):
    result = directional_gains(model, loss_fn, batch, optimizer, vectors, eigenvalues=eigenvalues)
    return (torch.tensor(result.gains, dtype=torch.float64),
            torch.tensor(result.predictions, dtype=torch.float64), result)


def _along(vectors, step, g):
    return (vectors.T @ step) / (vectors.T @ g)


def test_wsam_gain_is_one_plus_weighted_rho_lambda(quadratic):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    g = matrix @ _flat(model)
    gamma = 0.8
    optimizer = WSAM(model.parameters(), torch.optim.SGD, rho=RHO, gamma=gamma, lr=LR)
    gains, predictions, result = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    expected = 1 + gamma / (1 - gamma) * RHO * eigenvalues / g.norm()
    assert result.predictions_linear_in_eigenvalue
    assert torch.allclose(predictions, expected, rtol=1e-12, atol=0)
    assert torch.allclose(gains, expected, rtol=1e-8, atol=0)


def test_gsam_gain_is_affine_in_lambda(quadratic):
    """D = -lr (g_p - alpha g_perp), g_p = g + rho A g / ||g||, g_perp = g - <g, g_p> g_p /
    ||g_p||^2, from Zhuang et al.'s Algorithm 1 with the exact quadratic g_p."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    g = matrix @ _flat(model)
    alpha = 0.4
    optimizer = GSAM(model.parameters(), torch.optim.SGD, rho=RHO, alpha=alpha, lr=LR)
    gains, predictions, result = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    g_p = g + RHO * matrix @ g / g.norm()
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    expected = _along(vectors, g_p - alpha * g_perp, g)
    assert result.predictions_linear_in_eigenvalue
    assert torch.allclose(predictions, expected, rtol=1e-10, atol=0)
    assert torch.allclose(gains, expected, rtol=1e-8, atol=0)


def test_friendly_sam_perturbs_along_the_gradient_less_its_average(quadratic):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    sigma, lmbda = 0.7, 0.6
    optimizer = FriendlySAM(model.parameters(), torch.optim.SGD, rho=RHO, sigma=sigma,
                            lmbda=lmbda, lr=LR)
    average = torch.zeros(6, dtype=torch.float64)
    for _ in range(2):  # two real steps, so that the average is not zero
        g = matrix @ _flat(model)
        average = lmbda * average + (1 - lmbda) * g
        optimizer.step(lambda: _closure(model, loss_fn, batch, optimizer))
    g = matrix @ _flat(model)
    d = g - sigma * (lmbda * average + (1 - lmbda) * g)
    expected = _along(vectors, g + RHO * matrix @ d / d.norm(), g)
    gains, predictions, result = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    assert not result.predictions_linear_in_eigenvalue
    assert torch.allclose(predictions, expected, rtol=1e-10, atol=0)
    assert torch.allclose(gains, expected, rtol=1e-8, atol=0)


def _closure(model, loss_fn, batch, optimizer):
    optimizer.zero_grad()
    loss = loss_fn(model(batch[0]), batch[1])
    loss.backward()
    return loss


def test_looksam_predicts_its_sam_steps_and_its_reuse_steps(quadratic):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    alpha = 0.7
    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=RHO, k=2, alpha=alpha, lr=LR)
    g = matrix @ _flat(model)
    gains, predictions, _ = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    sam = 1 + RHO * eigenvalues / g.norm()
    assert torch.allclose(predictions, sam, rtol=1e-12) and torch.allclose(gains, sam, rtol=1e-8)
    # a SAM step keeps g_v = g_s - <g_s, g> g / ||g||^2; the next step reuses it
    g_s = g + RHO * matrix @ g / g.norm()
    g_v = g_s - (g_s @ g) / (g @ g) * g
    optimizer.step(lambda: _closure(model, loss_fn, batch, optimizer))
    g = matrix @ _flat(model)
    expected = _along(vectors, g + alpha * g.norm() * g_v / g_v.norm(), g)
    gains, predictions, _ = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    assert torch.allclose(predictions, expected, rtol=1e-10, atol=0)
    assert torch.allclose(gains, expected, rtol=1e-8, atol=0)


def test_rst_prediction_follows_the_next_draw(quadratic):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    g = matrix @ _flat(model)
    seen = set()
    for seed in range(12):
        optimizer = RST(model.parameters(), torch.optim.SGD, rho=RHO, p=0.5, seed=seed, lr=LR)
        sam_step = optimizer.next_step_perturbs()
        state = optimizer.generator.get_state()
        gains, predictions, _ = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
        expected = 1 + RHO * eigenvalues / g.norm() if sam_step else torch.ones(6, dtype=torch.float64)
        assert torch.allclose(predictions, expected, rtol=1e-12)
        assert torch.allclose(gains, expected, rtol=1e-8)
        assert torch.equal(optimizer.generator.get_state(), state)  # the measurement drew nothing
        seen.add(sam_step)
    assert seen == {True, False}


def test_msam_averages_its_micro_batches(quadratic):
    """On a batch of four identical examples each micro-batch has g_i = g, so m-SAM's step is
    SAM's; the prediction goes through the micro-batch Hessians all the same."""
    model, loss_fn, _, matrix, eigenvalues, vectors = quadratic
    batch = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    g = matrix @ _flat(model)
    optimizer = MSAM(model.parameters(), torch.optim.SGD, rho=RHO, m=2, lr=LR)
    gains, predictions, _ = _gains(model, loss_fn, batch, optimizer, vectors, eigenvalues)
    expected = 1 + RHO * eigenvalues / g.norm()
    assert torch.allclose(predictions, expected, rtol=1e-10)
    assert torch.allclose(gains, expected, rtol=1e-8)


def test_bsam_has_no_prediction(quadratic):
    model, loss_fn, batch, _, _, _ = quadratic
    optimizer = BSAM(model.parameters(), num_data=10, seed=0)
    measurement = measure_steps(model, loss_fn, batch, optimizer)
    assert measurement.prediction is None
    state = optimizer.generator.get_state()
    measure_steps(model, loss_fn, batch, optimizer)
    assert torch.equal(optimizer.generator.get_state(), state)


def test_variants_over_momentum_have_no_prediction(quadratic):
    model, loss_fn, batch, _, _, _ = quadratic
    for optimizer_class in (GSAM, WSAM, FriendlySAM, LookSAM, MSAM, RST):
        extra = {"m": 1} if optimizer_class is MSAM else {}
        optimizer = optimizer_class(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR,
                                    momentum=0.9, **extra)
        assert measure_steps(model, loss_fn, batch, optimizer).prediction is None
    assert StepForm.PERTURBED_GRADIENT.value == "perturbed_gradient"
