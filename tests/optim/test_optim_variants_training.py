"""The SAM variants in training loops: exact resume, GradScaler skips, IRE over them, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from samhess.optim import (
    BSAM,
    IRE,
    MSAM,
    RST,
    SAM,
    WSAM,
    FriendlySAM,
    GSAM,
    LookSAM,
    disable_running_stats,
)

from .test_optim_resume import (
    assert_identical,
    batches,
    check_resume_is_bit_identical,
    make_model,
)
from .test_optim_sam_training import SharpValley

SGD_MOMENTUM = dict(lr=0.05, momentum=0.9)

VARIANTS = {
    "gsam": lambda params: GSAM(params, torch.optim.SGD, rho=0.05, alpha=0.3, **SGD_MOMENTUM),
    "wsam": lambda params: WSAM(params, torch.optim.AdamW, rho=0.05, gamma=0.8, lr=1e-2),
    "friendly-sam": lambda params: FriendlySAM(params, torch.optim.SGD, rho=0.05, sigma=1.0,
                                               lmbda=0.6, **SGD_MOMENTUM),
    "looksam": lambda params: LookSAM(params, torch.optim.SGD, rho=0.05, k=3, **SGD_MOMENTUM),
    "msam": lambda params: MSAM(params, torch.optim.SGD, rho=0.05, m=2, **SGD_MOMENTUM),
    "rst": lambda params: RST(params, torch.optim.SGD, rho=0.05, p=0.5, seed=4, **SGD_MOMENTUM),
    "bsam": lambda params: BSAM(params, num_data=500, lr=0.02, rho=0.01, seed=4),
}


def build(name: str, model: nn.Module):
    """Optimizer and scheduler of configuration ``name``: a variant, or IRE over one."""
    params = model.parameters()
    if name.startswith("ire-"):
        optimizer = IRE(VARIANTS[name.removeprefix("ire-")](params), kappa=1.5, gamma=0.3,
                        refresh_every=3, ema=0.5)
    else:
        optimizer = VARIANTS[name](params)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)


def variant_step(model, optimizer, loss_of, scaler=None):
    """One step through the two-step API, as docs/optim.md writes it for each variant."""
    inner = optimizer.optimizer if isinstance(optimizer, IRE) else optimizer
    scale = (lambda loss: loss) if scaler is None else scaler.scale
    if isinstance(inner, MSAM):
        for index in range(inner.m):
            scale(loss_of(model, index)).backward()
            optimizer.first_step(zero_grad=True, grad_scaler=scaler)
            with disable_running_stats(model):
                scale(loss_of(model, index)).backward()
            optimizer.second_step(zero_grad=True, grad_scaler=scaler)
    else:
        if isinstance(inner, BSAM):
            with inner.noisy_weights():
                scale(loss_of(model, None)).backward()
        else:
            scale(loss_of(model, None)).backward()
        if optimizer.first_step(zero_grad=True, grad_scaler=scaler):
            with disable_running_stats(model):
                scale(loss_of(model, None)).backward()
        optimizer.second_step(zero_grad=True, grad_scaler=scaler)
    if scaler is not None:
        scaler.update()


def train(model, optimizer, scheduler, data):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data:
        if isinstance(optimizer, IRE) and optimizer.needs_refresh():
            grads = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
            optimizer.update_mask([g * g for g in grads])

        def loss_of(m, index):
            if index is None:
                return loss_fn(m(x), y)
            return loss_fn(m(x.chunk(2)[index]), y.chunk(2)[index])

        variant_step(model, optimizer, loss_of)
        scheduler.step()


RESUMED = [*VARIANTS, "ire-gsam", "ire-looksam", "ire-msam", "ire-bsam"]


@pytest.mark.parametrize("name", RESUMED)
def test_resumed_run_is_bit_identical(name):
    check_resume_is_bit_identical(name, build, train)


def test_checkpoint_of_one_kind_does_not_load_into_another():
    model = make_model(0)
    gsam, _ = build("gsam", model)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_MOMENTUM)
    looksam, _ = build("looksam", model)
    with pytest.raises(ValueError, match="state_dict was saved by GSAM, not by SAM"):
        sam.load_state_dict(gsam.state_dict())
    with pytest.raises(ValueError, match="state_dict was saved by SAM, not by GSAM"):
        gsam.load_state_dict(sam.state_dict())
    with pytest.raises(ValueError, match="state_dict was saved by GSAM, not by LookSAM"):
        looksam.load_state_dict(gsam.state_dict())


# -- GradScaler -----------------------------------------------------------------------------------

SCALED = {
    "gsam": lambda p: GSAM(p, torch.optim.SGD, rho=1.0, alpha=0.3, lr=1e-10, momentum=0.9),
    "wsam": lambda p: WSAM(p, torch.optim.SGD, rho=1.0, gamma=0.8, lr=1e-10, momentum=0.9),
    "friendly-sam": lambda p: FriendlySAM(p, torch.optim.SGD, rho=1.0, lr=1e-10, momentum=0.9),
    "looksam": lambda p: LookSAM(p, torch.optim.SGD, rho=1.0, k=3, lr=1e-10, momentum=0.9),
    "msam": lambda p: MSAM(p, torch.optim.SGD, rho=1.0, m=2, lr=1e-10, momentum=0.9),
    "rst": lambda p: RST(p, torch.optim.SGD, rho=1.0, p=0.5, seed=1, lr=1e-10, momentum=0.9),
    "bsam": lambda p: BSAM(p, num_data=10**12, rho=1.0, lr=1e-10, seed=1),
}
ALWAYS_TWO_PASS = ["gsam", "wsam", "friendly-sam", "msam", "bsam"]


def scaled_run(name, overflow_at, factor, scale, steps=5):
    """``steps`` scaled steps on SharpValley; at step ``overflow_at`` the scale is ``scale`` and
    the loss is multiplied by ``factor``; every other step runs at scale 1."""
    model = SharpValley()
    optimizer = SCALED[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    skipped = []
    for step in range(steps):
        overflow = step == overflow_at
        if step > 0:  # the scaler's scale exists once it has scaled a loss
            scaler.update(new_scale=scale if overflow else 1.0)
        weight = factor if overflow else 1.0
        variant_step(model, optimizer, lambda m, index: weight * m(), scaler)
        skipped.append(optimizer.skipped_last_step)
    return model, optimizer, skipped


@pytest.mark.parametrize("name", list(SCALED))
def test_grad_scaler_skip_in_the_first_pass_changes_nothing(name):
    """A run with a step lost to overflow continues exactly like a run without that step:
    weights, base state, moving averages, counters and random generators."""
    fmax = float(torch.finfo(torch.float32).max)
    model, optimizer, skipped = scaled_run(name, overflow_at=2, factor=4.0, scale=fmax)
    assert skipped == [False, False, True, False, False]
    twin, twin_optimizer, twin_skipped = scaled_run(name, overflow_at=None, factor=1.0,
                                                    scale=1.0, steps=4)
    assert not any(twin_skipped)
    assert_identical(model.state_dict(), twin.state_dict(), "model")
    assert_identical(optimizer.state_dict(), twin_optimizer.state_dict(), "optimizer")
    assert not torch.equal(model.w, SharpValley().w)


@pytest.mark.parametrize("name", ALWAYS_TWO_PASS)
def test_grad_scaler_skip_in_the_second_pass_changes_nothing(name):
    model, optimizer, skipped = scaled_run(name, overflow_at=2, factor=1.0, scale=1e34)
    assert skipped == [False, False, True, False, False]
    twin, twin_optimizer, _ = scaled_run(name, overflow_at=None, factor=1.0, scale=1.0, steps=4)
    assert_identical(model.state_dict(), twin.state_dict(), "model")
    assert_identical(optimizer.state_dict(), twin_optimizer.state_dict(), "optimizer")


def test_rst_draws_are_carried_by_deepcopy_and_seeded():
    params = list(make_model(0).parameters())
    first = RST(params, torch.optim.SGD, p=0.5, seed=9, lr=0.1)
    twin = copy.deepcopy(first)
    draws = [torch.rand((), generator=g).item() for g in (first.generator, twin.generator)]
    assert draws[0] == draws[1]
    torch.manual_seed(3)
    a = RST(params, torch.optim.SGD, lr=0.1)
    torch.manual_seed(3)
    b = RST(params, torch.optim.SGD, lr=0.1)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build_bad,error,pattern",
    [
        (lambda p: GSAM(p, torch.optim.SGD, alpha=-0.1, lr=0.1), ValueError,
         r"alpha must be >= 0, got -0.1"),
        (lambda p: WSAM(p, torch.optim.SGD, gamma=1.0, lr=0.1), ValueError,
         r"gamma must lie in \[0, 1\), got 1.0"),
        (lambda p: WSAM(p, torch.optim.SGD, lr=0.1, maximize=True), ValueError,
         r"decouple=True minimizes"),
        (lambda p: FriendlySAM(p, torch.optim.SGD, lmbda=1.0, lr=0.1), ValueError,
         r"lmbda must lie in \[0, 1\), got 1.0"),
        (lambda p: FriendlySAM(p, torch.optim.SGD, sigma="one", lr=0.1), TypeError,
         r"sigma must be a real number, got 'one'"),
        (lambda p: LookSAM(p, torch.optim.SGD, k=0, lr=0.1), ValueError,
         r"k must be >= 1, got 0"),
        (lambda p: LookSAM(p, torch.optim.SGD, k=2.5, lr=0.1), TypeError,
         r"k must be an integer, got 2.5"),
        (lambda p: MSAM(p, torch.optim.SGD, m=0, lr=0.1), ValueError, r"m must be >= 1, got 0"),
        (lambda p: RST(p, torch.optim.SGD, p=1.5, lr=0.1), ValueError,
         r"p must lie in \[0, 1\], got 1.5"),
        (lambda p: RST(p, torch.optim.SGD, seed=-1, lr=0.1), ValueError,
         r"seed must be >= 0, got -1"),
        (lambda p: BSAM(p, num_data=0), ValueError, r"num_data must be >= 1, got 0"),
        (lambda p: BSAM(p, num_data=10, betas=(0.9, 1.0)), ValueError,
         r"betas\[1\] must lie in \[0, 1\), got 1.0"),
        (lambda p: BSAM(p, num_data=10, s_init=0.0), ValueError, r"s_init must be > 0, got 0.0"),
        (lambda p: BSAM([{"params": p, "adaptive": True}], num_data=10), ValueError,
         r"cannot set adaptive=True"),
    ],
)
def test_variants_reject_bad_arguments(build_bad, error, pattern):
    with pytest.raises(error, match=pattern):
        build_bad(list(make_model(0).parameters()))


def test_hyperparameters_are_checked_on_assignment():
    optimizer = LookSAM(make_model(0).parameters(), torch.optim.SGD, lr=0.1)
    optimizer.alpha = 0.2
    assert optimizer.alpha == 0.2
    with pytest.raises(ValueError, match=r"alpha must be >= 0, got -1"):
        optimizer.alpha = -1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_grad_scaler_steps_equal_unscaled_steps(name):
    """The variants read scaled gradients in the first pass and keep g, moving averages and
    sums in unscaled units: with a scale of 2^10 the run matches the unscaled one."""
    data = batches()[:4]
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model = make_model(0)
        optimizer = VARIANTS[name](model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        for x, y in data:
            def loss_of(m, index):
                if index is None:
                    return loss_fn(m(x), y)
                return loss_fn(m(x.chunk(2)[index]), y.chunk(2)[index])

            variant_step(model, optimizer, loss_of, scaler)
            if scaler is not None:
                assert scaler.get_scale() == 2.0**10  # no step was skipped
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert not torch.equal(runs[0], torch.cat([p.detach().reshape(-1)
                                               for p in make_model(0).parameters()]))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-7)
