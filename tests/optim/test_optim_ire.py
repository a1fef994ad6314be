"""IRE against its closed form on a float64 quadratic with a known diagonal, and its contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from samhess.optim import IRE, SAM, flattest_coordinates_mask

# the known "curvature" diagonal, in flat parameter order; the 3 smallest are coordinates 1, 4, 6
DIAG = np.array([5.0, 0.1, 3.0, 9.0, 0.2, 7.0, 0.05])
GAMMA = 3 / 7
FLAT = np.array([0, 1, 0, 0, 1, 0, 1], dtype=float)
KAPPA = 2.0
RHO = 0.1

BASES = {
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def diag_like(model):
    d = torch.tensor(DIAG)
    return [d[:4].reshape(2, 2), d[4:]]


def reference_ire(reference, matrix, start, base, base_kwargs, steps, sam=False, kappas=None,
                  start_step=0):
    update = reference.sgd if base is torch.optim.SGD else reference.adamw
    w, state = start.copy(), {}
    for t in range(steps):
        e = reference.perturbation(w, matrix @ w, RHO, False, True) if sam else 0.0
        w_new = update(w, matrix @ (w + e), state, **base_kwargs)
        kappa = KAPPA if kappas is None else kappas[t]
        if t >= start_step:
            w_new = w_new + kappa * FLAT * (w_new - w)
        w = w_new
    return w


def run_two_step(model, ire, steps):
    for _ in range(steps):
        if ire.needs_refresh():
            ire.update_mask(diag_like(model))
        model().backward()
        ire.first_step(zero_grad=True)
        model().backward()
        ire.second_step(zero_grad=True)


def run_closure(model, ire, steps, scheduler=None):
    def closure():
        ire.zero_grad()
        loss = model()
        loss.backward()
        return loss

    for _ in range(steps):
        if ire.needs_refresh():
            ire.update_mask(diag_like(model))
        ire.step(closure)
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("base_name", list(BASES))
def test_ire_over_base_matches_closed_form(base_name, make_quadratic, quadratic_problem, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    model = make_quadratic()
    ire = IRE(base(model.parameters(), **kwargs), kappa=KAPPA, gamma=GAMMA, refresh_every=2)
    run_closure(model, ire, 4)
    expected = reference_ire(reference, matrix, start, base, kwargs, 4)
    np.testing.assert_allclose(model.flat().detach().numpy(), expected, rtol=0, atol=1e-10)
    # the amplification mattered: kappa = 0 lands elsewhere
    plain = reference_ire(reference, matrix, start, base, kwargs, 4, kappas=[0.0] * 4)
    assert np.abs(plain - expected).max() > 1e-3
    assert ire.step_count == 4


@pytest.mark.parametrize("base_name", list(BASES))
def test_ire_over_sam_matches_closed_form_on_both_paths(base_name, make_quadratic,
                                                        quadratic_problem, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES[base_name]
    expected = reference_ire(reference, matrix, start, base, kwargs, 4, sam=True)
    results = []
    for run in (run_two_step, run_closure):
        model = make_quadratic()
        ire = IRE(SAM(model.parameters(), base, rho=RHO, **kwargs), kappa=KAPPA, gamma=GAMMA)
        run(model, ire, 4)
        results.append(model.flat().detach().numpy())
    np.testing.assert_allclose(results[0], expected, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(results[1], results[0])


def test_start_step_and_missing_mask(make_quadratic, quadratic_problem, reference):
    matrix, start = quadratic_problem
    base, kwargs = BASES["sgd-momentum"]
    model = make_quadratic()
    ire = IRE(base(model.parameters(), **kwargs), kappa=KAPPA, gamma=GAMMA, start_step=2)
    refreshes = []
    for _ in range(5):
        refreshes.append(ire.needs_refresh())
        if refreshes[-1]:
            ire.update_mask(diag_like(model))
        model().backward()
        ire.step()
        ire.zero_grad()
    assert refreshes == [False, False, True, False, False]
    expected = reference_ire(reference, matrix, start, base, kwargs, 5, start_step=2)
    np.testing.assert_allclose(model.flat().detach().numpy(), expected, rtol=0, atol=1e-10)

    fresh = IRE(base(make_quadratic().parameters(), **kwargs), kappa=KAPPA, gamma=GAMMA,
                start_step=1)
    fresh.step()  # step 0 is a plain base step (no gradients: nothing moves)
    with pytest.raises(RuntimeError, match=r"step 1 \(start_step=1\) without a mask"):
        fresh.step()


def test_refresh_schedule_and_ema(make_quadratic):
    model = make_quadratic()
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.01), kappa=1.0, gamma=GAMMA,
              refresh_every=3, ema=0.25)
    seen, estimates = [], []
    rng = np.random.default_rng(0)
    for _ in range(7):
        seen.append(ire.needs_refresh())
        if seen[-1]:
            estimates.append([torch.tensor(rng.uniform(size=(2, 2))),
                              torch.tensor(rng.uniform(size=3))])
            ire.update_mask(estimates[-1])
        ire.step()
    assert seen == [True, False, False, True, False, False, True]
    expected = estimates[0]
    for new in estimates[1:]:
        expected = [0.25 * old + 0.75 * d for old, d in zip(expected, new)]
    for got, want in zip(ire.estimate, expected):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    flat = torch.cat([e.reshape(-1) for e in expected])
    chosen = torch.cat([m.reshape(-1) for m in ire.mask]).bool()
    assert int(chosen.sum()) == 3 and flat[chosen].max() < flat[~chosen].min()


def test_ema_from_zero_matches_the_official_recurrence(make_quadratic):
    """Averaging from zero, d_hat = (1 - ema) sum_s ema^(t - s) d_s: with ema 0.5, after d_1 and
    d_2 it is 0.25 d_1 + 0.5 d_2, against 0.5 d_1 + 0.5 d_2 from the first estimate. Coordinates
    0 and 1 swap ranks between the two conventions; the first refresh ranks alike."""
    d1 = [torch.tensor([[3.0, 0.0], [10.0, 10.0]], dtype=torch.float64),
          torch.full((3,), 10.0, dtype=torch.float64)]
    d2 = [torch.tensor([[0.0, 2.0], [10.0, 10.0]], dtype=torch.float64),
          torch.full((3,), 10.0, dtype=torch.float64)]
    masks, estimates = {}, {}
    for from_zero in (False, True):
        ire = IRE(torch.optim.SGD(make_quadratic().parameters(), lr=0.01), kappa=1.0,
                  gamma=1 / 7, ema=0.5, ema_from_zero=from_zero)
        ire.update_mask(d1)
        masks[from_zero, 1] = torch.cat([m.reshape(-1) for m in ire.mask]).tolist()
        ire.update_mask(d2)
        masks[from_zero, 2] = torch.cat([m.reshape(-1) for m in ire.mask]).tolist()
        estimates[from_zero] = ire.estimate
    for got, first, second in zip(estimates[True], d1, d2):
        torch.testing.assert_close(got, 0.25 * first + 0.5 * second, rtol=0, atol=0)
    for got, first, second in zip(estimates[False], d1, d2):
        torch.testing.assert_close(got, 0.5 * first + 0.5 * second, rtol=0, atol=0)
    assert masks[False, 1] == masks[True, 1] == [0, 1, 0, 0, 0, 0, 0]
    assert masks[False, 2] == [0, 1, 0, 0, 0, 0, 0]  # 0.5 * 3 + 0 > 0 + 0.5 * 2
    assert masks[True, 2] == [1, 0, 0, 0, 0, 0, 0]  # 0.25 * 3 + 0 < 0 + 0.5 * 2
    # a checkpoint written before the option existed averaged from the first estimate
    older = ire.state_dict()
    del older["hyperparameters"]["ema_from_zero"]
    fresh = IRE(torch.optim.SGD(make_quadratic().parameters(), lr=0.01), kappa=1.0, gamma=0.5,
                ema_from_zero=True)
    fresh.load_state_dict(older)
    assert fresh.ema_from_zero is False


def test_kappa_follows_lr(make_quadratic, quadratic_problem, reference):
    matrix, start = quadratic_problem
    model = make_quadratic()
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.05), kappa=KAPPA, gamma=GAMMA,
              kappa_follows_lr=True)
    scheduler = torch.optim.lr_scheduler.StepLR(ire, step_size=1, gamma=0.5)
    run_closure(model, ire, 4, scheduler)
    w, state = start.copy(), {}
    for t in range(4):
        w_new = reference.sgd(w, matrix @ w, state, lr=0.05 * 0.5**t)
        w = w_new + KAPPA * 0.5**t * FLAT * (w_new - w)
    np.testing.assert_allclose(model.flat().detach().numpy(), w, rtol=0, atol=1e-10)
    assert ire.current_kappa(0) == KAPPA * 0.5**4


def test_zero_kappa_is_the_base_optimizer(make_quadratic):
    models = [make_quadratic(), make_quadratic()]
    plain = torch.optim.AdamW(models[0].parameters(), lr=0.01)
    ire = IRE(torch.optim.AdamW(models[1].parameters(), lr=0.01), kappa=0.0, gamma=GAMMA)
    ire.update_mask(diag_like(models[1]))
    for _ in range(3):
        for model, optimizer in zip(models, (plain, ire)):
            model().backward()
            optimizer.step()
            optimizer.zero_grad()
    torch.testing.assert_close(models[1].flat(), models[0].flat(), rtol=0, atol=0)


# -- the mask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.37, 0.5, 0.9, 0.999])
def test_mask_holds_round_gamma_n_smallest(gamma):
    generator = torch.Generator().manual_seed(7)
    values = [torch.rand(5, 7, generator=generator), torch.rand(13, generator=generator),
              torch.rand(2, 3, 4, generator=generator)]
    n = sum(v.numel() for v in values)
    masks = flattest_coordinates_mask(values, gamma)
    assert [m.shape for m in masks] == [v.shape for v in values]
    flat = torch.cat([v.reshape(-1) for v in values])
    chosen = torch.cat([m.reshape(-1) for m in masks])
    assert int(chosen.sum()) == round(gamma * n)
    if 0 < chosen.sum() < n:
        assert flat[chosen].max() < flat[~chosen].min()

    per_tensor = flattest_coordinates_mask(values, gamma, per_tensor=True)
    for mask, value in zip(per_tensor, values):
        assert int(mask.sum()) == round(gamma * value.numel())
        if 0 < mask.sum() < value.numel():
            assert value[mask].max() < value[~mask].min()


def test_mask_tie_rule_and_rounding():
    values = [torch.ones(2, 2), torch.ones(3), torch.zeros(1)]
    # the zero ranks first, then ties in flat order: entries 0, 1 of the first tensor
    masks = flattest_coordinates_mask(values, 3 / 8)
    assert masks[0].tolist() == [[True, True], [False, False]]
    assert masks[1].tolist() == [False, False, False]
    assert masks[2].tolist() == [True]
    # Python's round: 0.25 * 10 = 2.5 -> 2 and 0.35 * 10 = 3.5 -> 4 (halves to even)
    assert int(flattest_coordinates_mask([torch.zeros(10)], 0.25)[0].sum()) == 2
    assert int(flattest_coordinates_mask([torch.zeros(10)], 0.35)[0].sum()) == 4
    # negative estimates rank below positive ones (by value, not magnitude)
    assert flattest_coordinates_mask([torch.tensor([0.5, -3.0, 1.0])], 0.3)[0].tolist() == [
        False, True, False]


def test_ire_mask_is_a_float_mask_with_the_right_count(make_quadratic):
    model = make_quadratic()
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=1.0, gamma=GAMMA, per_tensor=True)
    assert ire.mask is None
    ire.update_mask(diag_like(model))
    assert [m.dtype for m in ire.mask] == [torch.float64, torch.float64]
    # per tensor: round(3/7 * 4) = 2 of a = (5, 0.1, 3, 9), round(3/7 * 3) = 1 of b = (0.2, 7, 0.05)
    assert ire.mask[0].reshape(-1).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert ire.mask[1].tolist() == [0.0, 0.0, 1.0]


# -- mixed precision ------------------------------------------------------------------------------


def test_skipped_grad_scaler_step_leaves_ire_untouched(make_quadratic):
    model = make_quadratic().float()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.01, momentum=0.9)
    ire = IRE(sam, kappa=KAPPA, gamma=GAMMA)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)

    def sam_ire_step(inject_overflow=False):
        if ire.needs_refresh():
            ire.update_mask([d.float() for d in diag_like(model)])
        scaler.scale(model()).backward()
        ire.first_step(zero_grad=True, grad_scaler=scaler)
        scaler.scale(model()).backward()
        if inject_overflow:
            model.b.grad[0] = float("inf")
        ire.second_step(zero_grad=True, grad_scaler=scaler)
        scaler.update()

    for _ in range(2):
        sam_ire_step()
    before = copy.deepcopy((model.state_dict(), ire.state_dict()))
    sam_ire_step(inject_overflow=True)
    assert sam.skipped_last_step
    after = (model.state_dict(), ire.state_dict())
    assert after[1]["step_count"] == before[1]["step_count"] == 2
    for key in before[0]:
        torch.testing.assert_close(after[0][key], before[0][key], rtol=0, atol=0)
    for index, state in before[1]["optimizer"]["base_optimizer"]["state"].items():
        torch.testing.assert_close(after[1]["optimizer"]["base_optimizer"]["state"][index], state,
                                   rtol=0, atol=0)
    sam_ire_step()
    assert ire.step_count == 3 and not sam.skipped_last_step
    scaler.scale(model()).backward()
    ire.first_step(zero_grad=True)
    with pytest.raises(RuntimeError, match="between first_step"):
        ire.update_mask([d.float() for d in diag_like(model)])


def test_grad_scaler_step_on_ire_over_sgd(make_quadratic):
    model = make_quadratic().float()
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.01), kappa=KAPPA, gamma=GAMMA)
    ire.update_mask([d.float() for d in diag_like(model)])
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    start = model.flat().detach().clone()
    scaler.scale(model()).backward()
    model.a.grad[0, 0] = float("nan")
    scaler.step(ire)
    scaler.update()
    assert ire.step_count == 0
    torch.testing.assert_close(model.flat(), start, rtol=0, atol=0)


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(kappa=-1.0), ValueError, r"kappa must be >= 0, got -1.0"),
        (dict(gamma=0.0), ValueError, r"gamma must lie in the open interval \(0, 1\), got 0.0"),
        (dict(gamma=1.0), ValueError, r"gamma must lie in the open interval \(0, 1\), got 1.0"),
        (dict(gamma=1.5), ValueError, r"gamma .* got 1.5"),
        (dict(refresh_every=0), ValueError, r"refresh_every must be >= 1, got 0"),
        (dict(refresh_every=2.5), TypeError, r"refresh_every must be an integer, got 2.5"),
        (dict(start_step=-1), ValueError, r"start_step must be >= 0, got -1"),
        (dict(ema=1.0), ValueError, r"ema must lie in \[0, 1\), got 1.0"),
        (dict(per_tensor="yes"), TypeError, r"per_tensor must be a bool, got 'yes'"),
        (dict(ema_from_zero=1), TypeError, r"ema_from_zero must be a bool, got 1"),
        (dict(refresh_fraction=0.0), ValueError, r"refresh_fraction must lie in \(0, 1\], got 0.0"),
        (dict(refresh_fraction=1.5), ValueError, r"refresh_fraction must lie in \(0, 1\], got 1.5"),
    ],
)
def test_ire_rejects_bad_arguments(kwargs, error, pattern, make_quadratic):
    arguments = dict(kappa=1.0, gamma=0.5) | kwargs
    with pytest.raises(error, match=pattern):
        IRE(torch.optim.SGD(make_quadratic().parameters(), lr=0.1), **arguments)


def test_ire_rejects_bad_optimizers_and_diagonals(make_quadratic):
    model = make_quadratic()
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer instance"):
        IRE(torch.optim.SGD, kappa=1.0, gamma=0.5)
    with pytest.raises(ValueError, match=r"kappa_follows_lr .* param_groups\[0\]\['lr'\] = 0.0"):
        IRE(torch.optim.SGD(model.parameters(), lr=0.0), 1.0, 0.5, kappa_follows_lr=True)
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=1.0, gamma=0.5)
    with pytest.raises(ValueError,
                       match=r"diag\[1\] has shape \(4,\) but parameter 1 has shape \(3,\)"):
        ire.update_mask([torch.ones(2, 2), torch.ones(4)])
    with pytest.raises(ValueError, match=r"diag must hold one tensor per parameter \(2\), got 1"):
        ire.update_mask([torch.ones(2, 2)])
    with pytest.raises(TypeError, match=r"diag must be a list of tensors .* got Tensor"):
        ire.update_mask(torch.ones(7))
    with pytest.raises(ValueError, match=r"diag\[0\] holds inf or NaN"):
        ire.update_mask([torch.full((2, 2), float("nan")), torch.ones(3)])
    with pytest.raises(TypeError, match=r"first_step\(\) needs a SAM inner optimizer, got SGD"):
        ire.first_step()
    with pytest.raises(ValueError, match=r"kappa must be >= 0"):
        ire.kappa = -0.5
    assert ire.mask is None  # failed updates leave no mask behind


@pytest.mark.parametrize("size,fraction,kept", [(64, 0.25, 16), (5, 0.25, 2), (3, 0.1, 1), (7, 1.0, 7)])
def test_refresh_batch_keeps_the_leading_share_of_every_tensor(size, fraction, kept, make_quadratic):
    ire = IRE(torch.optim.SGD(make_quadratic().parameters(), lr=0.1), kappa=1.0, gamma=0.5,
              refresh_fraction=fraction)
    inputs, targets = torch.randn(size, 3, 2), torch.arange(size)
    sub_inputs, sub_targets = ire.refresh_batch((inputs, targets))
    assert torch.equal(sub_inputs, inputs[:kept]) and torch.equal(sub_targets, targets[:kept])
    nested = ire.refresh_batch({"tokens": inputs, "extra": [targets, targets * 2]})
    assert torch.equal(nested["tokens"], inputs[:kept])
    assert torch.equal(nested["extra"][1], 2 * targets[:kept])


def test_refresh_fraction_default_checkpoint_and_errors(make_quadratic):
    model = make_quadratic()
    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=1.0, gamma=0.5)
    assert ire.refresh_fraction == 0.25
    saved = ire.state_dict()
    other = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=1.0, gamma=0.5,
                refresh_fraction=0.5)
    other.load_state_dict(saved)
    assert other.refresh_fraction == 0.25
    # a state dict from before refresh_fraction existed keeps the constructor's value
    del saved["hyperparameters"]["refresh_fraction"]
    third = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=1.0, gamma=0.5,
                refresh_fraction=0.5)
    third.load_state_dict(saved)
    assert third.refresh_fraction == 0.5
    with pytest.raises(TypeError, match=r"batch must hold tensors .* got str"):
        ire.refresh_batch("abc")
    with pytest.raises(TypeError, match=r"batch must be a tensor, or a tuple, list or dict of "
                                        r"tensors, got str"):
        ire.refresh_batch((torch.ones(4), "labels"))
