"""Directional gains on L = 1/2 w^T A w, where every expansion is exact, against closed forms.

On a quadratic, grad L(w + e) = g + A e exactly, so SAM's gain along an eigenvector q_i of A is
1 + rho lambda_i / ||g|| (USAM: 1 + rho lambda_i) with no remainder, and IRE's step is
-lr (I + kappa M) g (over SGD) or -lr (I + kappa M)(g + rho A g / ||g||) (over SAM).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from samhess.analysis import directional_gains, measure_steps, sharp_flat_gains
from samhess.curvature import eigenpairs, HessianOperator
from samhess.optim import IRE, SAM, USAM

LR = 0.1
RHO = 0.05
KAPPA = 2.0
GAMMA = 0.5


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def gradient(model, matrix):
    return matrix @ flat_params(model)


def mask_vector(ire):
    return torch.cat([m.reshape(-1) for m in ire.mask])


def ire_over(inner, diagonal):
    ire = IRE(inner, kappa=KAPPA, gamma=GAMMA)
    ire.update_mask(diagonal)
    return ire


def diagonal_of(model, matrix):
    """A diagonal estimate (the diagonal of A), shaped like the parameters."""
    d = torch.diagonal(matrix)
    return [d[:4].reshape(2, 2).clone(), d[4:].clone()]


def test_sgd_gain_is_one(quadratic):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    result = directional_gains(model, loss_fn, batch, sgd, vectors, eigenvalues=eigenvalues)
    ones = torch.ones(6, dtype=torch.float64)
    assert torch.allclose(torch.tensor(result.gains, dtype=torch.float64), ones, rtol=0, atol=1e-12)
    assert result.predictions == [1.0] * 6
    g = gradient(model, matrix)
    assert result.grad_norm == pytest.approx(float(g.norm()), rel=1e-14)
    reference_components = torch.tensor(result.reference_components, dtype=torch.float64)
    assert torch.allclose(reference_components, -LR * vectors.T @ g, rtol=1e-13, atol=0)


@pytest.mark.parametrize("normalize", [True, False], ids=["sam", "usam"])
def test_sam_and_usam_gains_equal_closed_form(quadratic, normalize):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    g = gradient(model, matrix)
    if normalize:
        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        expected = 1 + RHO * eigenvalues / g.norm()
    else:
        optimizer = USAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        expected = 1 + RHO * eigenvalues
    result = directional_gains(model, loss_fn, batch, optimizer, vectors, eigenvalues=eigenvalues)
    gains = torch.tensor(result.gains, dtype=torch.float64)
    assert torch.allclose(gains, expected, rtol=1e-8, atol=0)
    assert torch.allclose(torch.tensor(result.predictions, dtype=torch.float64), expected,
                          rtol=1e-12, atol=0)
    expected_formula = "1 + rho lambda / ||g||" if normalize else "1 + rho lambda"
    assert result.prediction_formula == expected_formula
    # Without eigenvalues the prediction goes through the predicted step -lr (g + c H g).
    without = directional_gains(model, loss_fn, batch, optimizer, vectors)
    assert torch.allclose(torch.tensor(without.predictions, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)


@pytest.mark.parametrize("over_sam", [False, True], ids=["ire_sgd", "ire_sam"])
def test_ire_gain_equals_closed_form(quadratic, over_sam):
    """IRE over SGD: D = -lr (I + kappa M) g; over SAM: -lr (I + kappa M)(g + rho A g / ||g||)."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    if over_sam:
        inner = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    else:
        inner = torch.optim.SGD(model.parameters(), lr=LR)
    ire = ire_over(inner, diagonal_of(model, matrix))
    m = mask_vector(ire)
    assert 0 < m.sum() < m.numel()
    g = gradient(model, matrix)
    base_direction = g + RHO * matrix @ g / g.norm() if over_sam else g
    expected = (vectors.T @ ((1 + KAPPA * m) * base_direction)) / (vectors.T @ g)
    result = directional_gains(model, loss_fn, batch, ire, vectors, eigenvalues=eigenvalues)
    assert torch.allclose(torch.tensor(result.gains, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)
    assert torch.allclose(torch.tensor(result.predictions, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)
    assert result.optimizer == ("IRE(SAM(SGD))" if over_sam else "IRE(SGD)")


def test_ire_over_adamw_against_its_own_base(quadratic):
    """Reference = IRE's inner AdamW: the gain is <v, (I + kappa M) D> / <v, D> exactly."""
    model, loss_fn, batch, matrix, _, vectors = quadratic
    adamw = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    ire = ire_over(adamw, diagonal_of(model, matrix))
    measurement = measure_steps(model, loss_fn, batch, ire, reference=adamw)
    m = mask_vector(ire)
    assert torch.allclose(measurement.step, (1 + KAPPA * m) * measurement.reference_step,
                          rtol=1e-10, atol=1e-15)
    result = directional_gains(model, loss_fn, batch, ire, vectors, reference=adamw)
    expected = (vectors.T @ ((1 + KAPPA * m) * measurement.reference_step)) / (
        vectors.T @ measurement.reference_step)
    assert torch.allclose(torch.tensor(result.gains, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)
    assert torch.allclose(torch.tensor(result.predictions, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)
    # Against the gradient step, AdamW has no closed-form first-order prediction.
    assert directional_gains(model, loss_fn, batch, ire, vectors).predictions is None


def test_given_reference_step(quadratic):
    model, loss_fn, batch, matrix, _, vectors = quadratic
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    g = gradient(model, matrix)
    result = directional_gains(model, loss_fn, batch, sgd, vectors, reference=-2 * LR * g)
    assert torch.allclose(torch.tensor(result.gains, dtype=torch.float64),
                          torch.full((6,), 0.5, dtype=torch.float64), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="reference"):
        directional_gains(model, loss_fn, batch, sgd, vectors, reference=torch.zeros(5))


def test_bad_arguments(quadratic):
    model, loss_fn, batch, _, eigenvalues, vectors = quadratic
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match=r"directions must have shape \(6, k\)"):
        directional_gains(model, loss_fn, batch, sgd, vectors[:5])
    with pytest.raises(ValueError, match="eigenvalues"):
        directional_gains(model, loss_fn, batch, sgd, vectors, eigenvalues=eigenvalues[:3])
    with pytest.raises(TypeError, match="optimizer"):
        directional_gains(model, loss_fn, batch, "sgd", vectors)
    with pytest.raises(TypeError, match="batch"):
        directional_gains(model, loss_fn, batch[0], sgd, vectors)
    other = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\[0\]"):
        measure_steps(model, loss_fn, batch, torch.optim.SGD([other], lr=LR),
                      params=list(model.parameters()))


def test_sharp_flat_gains_equal_closed_form(quadratic):
    """Subspace gains are the (q_i . g)^2-weighted means of 1 + rho lambda_i / ||g||."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    g = gradient(model, matrix)
    per_direction = 1 + RHO * eigenvalues / g.norm()
    weights = (vectors.T @ g) ** 2
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    top = eigenpairs(HessianOperator(model, loss_fn, batch), 2, which="largest")
    expected_sharp = float((weights[:2] * per_direction[:2]).sum() / weights[:2].sum())
    expected_complement = float((weights[2:] * per_direction[2:]).sum() / weights[2:].sum())
    expected_smallest = float((weights[4:] * per_direction[4:]).sum() / weights[4:].sum())
    result = sharp_flat_gains(model, loss_fn, batch, sam, k=2, sharp=top)
    assert result.sharp_gain == pytest.approx(expected_sharp, rel=1e-8)
    assert result.flat_gain == pytest.approx(expected_complement, rel=1e-8)
    assert result.ratio == pytest.approx(expected_sharp / expected_complement, rel=1e-8)
    assert result.predicted_ratio == pytest.approx(result.ratio, rel=1e-8)
    assert result.eigenvalues == pytest.approx([4.0, 2.5], rel=1e-8)
    smallest = sharp_flat_gains(model, loss_fn, batch, sam, k=2, flat="smallest")
    assert smallest.flat_eigenvalues == pytest.approx([0.1, 0.3], rel=1e-8)
    assert smallest.flat_gain == pytest.approx(expected_smallest, rel=1e-8)
    assert smallest.sharp_gain == pytest.approx(expected_sharp, rel=1e-8)
    sharp_share = float(weights[:2].sum() / weights.sum())
    assert result.sharp_share == pytest.approx(sharp_share, rel=1e-10)


def test_sharp_flat_gains_are_nan_below_min_share(quadratic):
    """A start point with components 1e-3 on the top-2 eigenvectors: the sharp subspace holds
    1.4e-5 of ||g||^2 (closed form below), under the default min_share 1e-4, so the
    measured sharp gain and the ratio are NaN with a reason; with min_share=0 the sharp gain is
    the quadratic's exact 1 + rho lambda / ||g|| mean (no higher-order terms here)."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    coefficients = torch.tensor([1e-3, -1e-3, 0.6, 1.2, -0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        start = vectors @ coefficients
        model.a.copy_(start[:4].reshape(2, 2))
        model.b.copy_(start[4:])
    g = gradient(model, matrix)
    weights = (eigenvalues * coefficients) ** 2  # <q_i, g>^2
    share = float(weights[:2].sum() / weights.sum())
    assert 1e-5 < share < 2e-5
    per_direction = 1 + RHO * eigenvalues / g.norm()
    expected_sharp = float((weights[:2] * per_direction[:2]).sum() / weights[:2].sum())
    top = eigenpairs(HessianOperator(model, loss_fn, batch), 2, which="largest")
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)

    result = sharp_flat_gains(model, loss_fn, batch, sam, k=2, sharp=top)
    assert result.sharp_share == pytest.approx(share, rel=1e-6)
    assert result.min_share == 1e-4
    assert math.isnan(result.sharp_gain) and math.isnan(result.ratio)
    assert result.flat_gain == pytest.approx(result.predicted_flat_gain, rel=1e-8)
    assert result.predicted_sharp_gain == pytest.approx(expected_sharp, rel=1e-6)
    assert result.undefined_reason.startswith(f"the sharp subspace holds {share:.2e} of")
    assert "min_share=0.0001" in result.undefined_reason
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["ratio"] is None

    every = sharp_flat_gains(model, loss_fn, batch, sam, k=2, sharp=top, min_share=0.0)
    assert every.undefined_reason == ""
    assert every.sharp_gain == pytest.approx(expected_sharp, rel=1e-6)
    assert every.ratio == pytest.approx(every.predicted_ratio, rel=1e-6)

    # the same rule on a given flat subspace: the top-2 eigenvectors as "flat" directions
    flipped = sharp_flat_gains(model, loss_fn, batch, sam, k=2, sharp=top,
                               flat_directions=vectors[:, :2], min_share=1e-3)
    assert math.isnan(flipped.flat_gain) and math.isnan(flipped.sharp_gain)
    assert flipped.undefined_reason.count("subspace holds") == 2
    with pytest.raises(ValueError, match=r"min_share must lie in \[0, 1\), got 1.0"):
        sharp_flat_gains(model, loss_fn, batch, sam, k=2, sharp=top, min_share=1.0)


# ---- bit-identical restoration --------------------------------------------------------------


def _optimizers(model, matrix):
    params = list(model.parameters())
    return {
        "sgd-momentum": torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True),
        "adam": torch.optim.Adam(params, lr=LR),
        "sam-sgd-momentum": SAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9),
        "ire-adamw": ire_over(torch.optim.AdamW(params, lr=LR), diagonal_of(model, matrix)),
        "ire-sam": ire_over(SAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9),
                            diagonal_of(model, matrix)),
    }


def _assert_identical(before, after, where="state"):
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), where
        assert before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            _assert_identical(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for index, (b, a) in enumerate(zip(before, after)):
            _assert_identical(b, a, f"{where}[{index}]")
    else:
        assert before == after, where


def _closure(model, loss_fn, batch, optimizer):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "sam-sgd-momentum", "ire-adamw",
                                  "ire-sam"])
def test_measurement_leaves_everything_bit_identical(quadratic, name):
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    optimizer = _optimizers(model, matrix)[name]
    for _ in range(2):  # populate momentum buffers, Adam moments, step counts
        optimizer.step(_closure(model, loss_fn, batch, optimizer))
    model.train()
    groups = optimizer.param_groups
    params_before = [p.detach().clone() for p in model.parameters()]
    grads_before = [p.grad.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict())
    rng_before = torch.get_rng_state()
    step_count = getattr(optimizer, "step_count", None)

    directional_gains(model, loss_fn, batch, optimizer, vectors, eigenvalues=eigenvalues)
    directional_gains(model, loss_fn, batch, optimizer, vectors,
                      reference=getattr(optimizer, "optimizer", None))

    for before, p in zip(params_before, model.parameters()):
        assert torch.equal(before, p.detach())
    for before, p in zip(grads_before, model.parameters()):
        assert torch.equal(before, p.grad)
    _assert_identical(state_before, optimizer.state_dict())
    assert torch.equal(rng_before, torch.get_rng_state())
    assert model.training
    assert optimizer.param_groups is groups
    if step_count is not None:
        assert optimizer.step_count == step_count
    inner = getattr(optimizer, "optimizer", optimizer)
    if isinstance(inner, SAM):
        assert inner.base_optimizer.param_groups is inner.param_groups


@pytest.mark.parametrize("name", ["sgd-momentum", "adam", "sam-sgd-momentum", "ire-adamw",
                                  "ire-sam"])
def test_training_after_a_measurement_matches_training_without(quadratic, name):
    """Three steps after directional_gains land where three steps without it land, bit for bit."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    twin = copy.deepcopy(model)
    optimizer = _optimizers(model, matrix)[name]
    twin_optimizer = _optimizers(twin, matrix)[name]
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        o.step(_closure(m, loss_fn, batch, o))
    directional_gains(model, loss_fn, batch, optimizer, vectors, eigenvalues=eigenvalues)
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        for _ in range(3):
            o.step(_closure(m, loss_fn, batch, o))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a.detach(), b.detach())
