"""Save after 20 steps, load into fresh objects, 20 more steps == 40 straight steps, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from samhess.optim import IRE, SAM, disable_running_stats

STEPS = 20


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.ReLU(), nn.Linear(10, 3))


def batches():
    generator = torch.Generator().manual_seed(11)
    return [
        (torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(2 * STEPS)
    ]


def build(name: str, model: nn.Module):
    """Optimizer and scheduler (or None) of configuration ``name``."""
    params = model.parameters()
    if name == "sam-sgd-momentum":
        optimizer = SAM(params, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9, nesterov=True)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    if name == "sam-adamw":
        return SAM(params, torch.optim.AdamW, rho=0.05, adaptive=True, lr=1e-2), None
    if name == "ire-adamw":
        return IRE(torch.optim.AdamW(params, lr=1e-2), kappa=1.5, gamma=0.3, refresh_every=3,
                   ema=0.5), None
    if name == "ire-sgd-ema-from-zero":
        return IRE(torch.optim.SGD(params, lr=0.05, momentum=0.9), kappa=1.5, gamma=0.3,
                   refresh_every=3, ema=0.8, ema_from_zero=True), None
    if name == "ire-sam":
        optimizer = IRE(SAM(params, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9), kappa=1.5,
                        gamma=0.3, refresh_every=3, ema=0.5, kappa_follows_lr=True)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    raise AssertionError(name)


def train(model, optimizer, scheduler, data):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data:
        if isinstance(optimizer, IRE) and optimizer.needs_refresh():
            grads = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
            optimizer.update_mask([g * g for g in grads])
        if isinstance(optimizer, SAM) or isinstance(getattr(optimizer, "optimizer", None), SAM):
            loss_fn(model(x), y).backward()
            optimizer.first_step(zero_grad=True)
            with disable_running_stats(model):
                loss_fn(model(x), y).backward()
            optimizer.second_step(zero_grad=True)
        else:
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()


def assert_identical(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{index}]")
    else:
        assert a == b, path


def check_resume_is_bit_identical(name, build, train):
    """Straight ``2 * STEPS`` steps against ``STEPS`` steps, a checkpoint loaded into fresh
    objects (built over other weights) and ``STEPS`` more, for ``build(name, model)`` ->
    ``(optimizer, scheduler or None)``; and a control resume without the optimizer state,
    which must differ."""
    data = batches()
    straight_model = make_model(0)
    straight, straight_scheduler = build(name, straight_model)
    train(straight_model, straight, straight_scheduler, data)

    model = make_model(0)
    optimizer, scheduler = build(name, model)
    train(model, optimizer, scheduler, data[:STEPS])
    checkpoint = copy.deepcopy({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
    })
    del model, optimizer, scheduler

    resumed_model = make_model(1)  # different weights: only the checkpoint can make them agree
    resumed, resumed_scheduler = build(name, resumed_model)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optimizer"])
    if resumed_scheduler is not None:
        resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    train(resumed_model, resumed, resumed_scheduler, data[STEPS:])

    assert_identical(resumed_model.state_dict(), straight_model.state_dict(), "model")
    assert_identical(resumed.state_dict(), straight.state_dict(), "optimizer")
    if isinstance(straight, IRE):  # one count per step, also over MSAM's micro-batches
        assert resumed.step_count == straight.step_count == 2 * STEPS

    # control: the same resume with the optimizer state left out is a different run
    control_model = make_model(1)
    control, control_scheduler = build(name, control_model)
    control_model.load_state_dict(checkpoint["model"])
    if control_scheduler is not None:
        control_scheduler.load_state_dict(checkpoint["scheduler"])
    train(control_model, control, control_scheduler, data[STEPS:])
    assert not torch.equal(control_model[0].weight, straight_model[0].weight)


@pytest.mark.parametrize(
    "name", ["sam-sgd-momentum", "sam-adamw", "ire-adamw", "ire-sgd-ema-from-zero", "ire-sam"]
)
def test_resumed_run_is_bit_identical(name):
    check_resume_is_bit_identical(name, build, train)
