"""SAM, USAM and ASAM on L(w) = 1/2 w^T A w in float64 against hand-computed updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samhess.optim import ASAM, SAM, USAM

VARIANTS = {
    "sam": dict(adaptive=False, normalize=True),
    "usam": dict(adaptive=False, normalize=False),
    "asam": dict(adaptive=True, normalize=True),
    "asam-unnormalized": dict(adaptive=True, normalize=False),
}

BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.05)),
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
}

RHO = 0.1
STEPS = 3


def reference_run(reference, matrix, start, base, base_kwargs, variant, rhos=None, steps=STEPS):
    """Three SAM steps by the textbook formulas; ``rhos`` gives a per-coordinate radius."""
    rho = np.full(7, RHO) if rhos is None else rhos
    w, state = start.copy(), {}
    update = reference.sgd if base is torch.optim.SGD else reference.adamw
    for _ in range(steps):
        e = reference.perturbation(w, matrix @ w, rho, **variant)
        w = update(w, matrix @ (w + e), state, **base_kwargs)
    return w


def two_step_run(model, optimizer, steps=STEPS):
    for _ in range(steps):
        model().backward()
        optimizer.first_step(zero_grad=True)
        model().backward()
        optimizer.second_step(zero_grad=True)
    return model.flat().detach().numpy()


def closure_run(model, optimizer, steps=STEPS):
    losses = []

    def closure():
        optimizer.zero_grad()
        loss = model()
        loss.backward()
        return loss

    for _ in range(steps):
        losses.append(optimizer.step(closure).item())
    return model.flat().detach().numpy(), losses


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("variant_name", list(VARIANTS))
def test_two_step_matches_closed_form(variant_name, base_name, make_quadratic, quadratic_problem,
                                      reference):
    matrix, start = quadratic_problem
    base, base_kwargs = BASES[base_name]
    model = make_quadratic()
    optimizer = SAM(model.parameters(), base, rho=RHO, **VARIANTS[variant_name], **base_kwargs)
    expected = reference_run(reference, matrix, start, base, base_kwargs, VARIANTS[variant_name])
    np.testing.assert_allclose(two_step_run(model, optimizer), expected, rtol=0, atol=1e-10)
    # the steps must have moved w, or the comparison above proves nothing
    assert np.abs(expected - start).max() > 1e-3


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("variant_name", list(VARIANTS))
def test_closure_path_equals_two_step_path_exactly(variant_name, base_name, make_quadratic,
                                                   quadratic_problem):
    matrix, start = quadratic_problem
    base, base_kwargs = BASES[base_name]
    model_a, model_b = make_quadratic(), make_quadratic()
    two_step = two_step_run(
        model_a, SAM(model_a.parameters(), base, rho=RHO, **VARIANTS[variant_name], **base_kwargs)
    )
    closure, losses = closure_run(
        model_b, SAM(model_b.parameters(), base, rho=RHO, **VARIANTS[variant_name], **base_kwargs)
    )
    np.testing.assert_array_equal(closure, two_step)
    # step(closure) returns the loss at w, before the step
    assert losses[0] == pytest.approx(0.5 * start @ matrix @ start, rel=1e-14)


def test_usam_and_asam_classes_are_the_flag_combinations(make_quadratic, quadratic_problem,
                                                         reference):
    matrix, start = quadratic_problem
    for cls, variant in ((USAM, VARIANTS["usam"]), (ASAM, VARIANTS["asam"])):
        model = make_quadratic()
        optimizer = cls(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.05)
        assert optimizer.param_groups[0]["adaptive"] == variant["adaptive"]
        assert optimizer.param_groups[0]["normalize"] == variant["normalize"]
        expected = reference_run(reference, matrix, start, torch.optim.SGD, dict(lr=0.05), variant)
        np.testing.assert_allclose(two_step_run(model, optimizer), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant_name", ["sam", "asam"])
def test_per_group_rho_with_global_norm(variant_name, make_quadratic, quadratic_problem,
                                        reference):
    matrix, start = quadratic_problem
    model = make_quadratic()
    groups = [{"params": [model.a], "rho": 0.3}, {"params": [model.b], "rho": 0.02}]
    optimizer = SAM(groups, torch.optim.SGD, rho=RHO, **VARIANTS[variant_name], lr=0.05,
                    momentum=0.5)
    rhos = np.array([0.3] * 4 + [0.02] * 3)
    expected = reference_run(reference, matrix, start, torch.optim.SGD,
                             dict(lr=0.05, momentum=0.5), VARIANTS[variant_name], rhos=rhos)
    np.testing.assert_allclose(two_step_run(model, optimizer), expected, rtol=0, atol=1e-10)


def test_perturbation_and_reported_norm(make_quadratic, quadratic_problem):
    matrix, start = quadratic_problem
    model = make_quadratic()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.05)
    model().backward()
    optimizer.first_step()
    g = matrix @ start
    np.testing.assert_allclose(model.flat().detach().numpy() - start,
                               RHO * g / np.linalg.norm(g), rtol=0, atol=1e-14)
    assert optimizer.last_grad_norm.item() == pytest.approx(np.linalg.norm(g), rel=1e-14)
    # second_step restores w bit for bit before the base step: with lr=0 nothing moves
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.zero_grad()
    model().backward()
    optimizer.second_step()
    np.testing.assert_array_equal(model.flat().detach().numpy(), start)


def test_maximize_perturbs_against_the_gradient(make_quadratic, quadratic_problem):
    matrix, start = quadratic_problem
    model = make_quadratic()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.05, maximize=True)
    model().backward()
    optimizer.first_step()
    g = matrix @ start
    np.testing.assert_allclose(model.flat().detach().numpy() - start,
                               -RHO * g / np.linalg.norm(g), rtol=0, atol=1e-14)


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("variant_name", list(VARIANTS))
def test_zero_gradient_gives_the_base_step(variant_name, base_name, make_quadratic):
    base, base_kwargs = BASES[base_name]
    model_sam, model_base = make_quadratic(), make_quadratic()
    sam = SAM(model_sam.parameters(), base, rho=RHO, **VARIANTS[variant_name], **base_kwargs)
    plain = base(model_base.parameters(), **base_kwargs)
    for _ in range(2):
        (0.0 * model_sam()).backward()
        sam.first_step(zero_grad=True)
        (0.0 * model_sam()).backward()
        sam.second_step(zero_grad=True)
        (0.0 * model_base()).backward()
        plain.step()
        plain.zero_grad()
    w = model_sam.flat().detach()
    assert torch.isfinite(w).all()
    assert sam.last_grad_norm.item() == 0.0
    torch.testing.assert_close(w, model_base.flat().detach(), rtol=0, atol=0)


def test_parameters_without_gradient_are_left_alone(make_quadratic, quadratic_problem):
    matrix, start = quadratic_problem
    model = make_quadratic()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.05)
    a = model.a.reshape(-1)
    (0.5 * a @ torch.tensor(matrix[:4, :4]) @ a).backward()
    assert model.b.grad is None
    optimizer.first_step()
    np.testing.assert_array_equal(model.b.detach().numpy(), start[4:])
    g = matrix[:4, :4] @ start[:4]
    np.testing.assert_allclose(model.a.detach().numpy().reshape(-1) - start[:4],
                               RHO * g / np.linalg.norm(g), rtol=0, atol=1e-14)
