"""SAM in real training loops: BatchNorm, gradient accumulation, AMP, schedulers, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from samhess.optim import IRE, SAM, disable_running_stats


def small_cnn(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8, momentum=momentum),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def cnn_batch(n: int = 16):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 1, 6, 6, generator=generator)
    return inputs, torch.randint(0, 3, (n,), generator=generator)


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


# -- BatchNorm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_second_pass_leaves_running_statistics_as_after_one_forward(momentum):
    x, y = cnn_batch()
    model = small_cnn(momentum)
    reference = copy.deepcopy(model)
    reference(x)  # one training-mode forward at w: the statistics SAM must end with
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)

    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    shadow = copy.deepcopy(model)  # same weights w + e, statistics free to move
    with disable_running_stats(model):
        output = model(x)
        nn.functional.cross_entropy(output, y).backward()
    optimizer.second_step(zero_grad=True)

    expected = batchnorm_buffers(reference)
    for key, value in batchnorm_buffers(model).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    # the block still normalizes with batch statistics, as training mode does
    torch.testing.assert_close(output, shadow(x), rtol=0, atol=0)
    # and without the block the second forward would have moved the statistics
    moved = batchnorm_buffers(shadow)
    assert not torch.equal(moved["1.running_mean"], expected["1.running_mean"])
    assert moved["1.num_batches_tracked"].item() == expected["1.num_batches_tracked"].item() + 1


def test_disable_running_stats_restores_flags_on_error():
    model = small_cnn()
    model[1].track_running_stats = True
    untracked = nn.BatchNorm1d(3, track_running_stats=False)
    model.append(untracked)
    with pytest.raises(KeyError):
        with disable_running_stats(model):
            assert not model[1].track_running_stats
            raise KeyError("boom")
    assert model[1].track_running_stats and model[5].track_running_stats
    assert not untracked.track_running_stats


# -- gradient accumulation ------------------------------------------------------------------------


def mlp64() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


@pytest.mark.parametrize("adaptive,normalize", [(False, True), (False, False), (True, True)])
def test_accumulated_micro_batches_equal_the_large_batch_step(adaptive, normalize):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=generator)
    sizes = [10, 8, 6]  # uneven on purpose: each micro-batch mean is weighted by n_i / N
    loss_fn = nn.CrossEntropyLoss()

    def make():
        model = mlp64()
        return model, SAM(model.parameters(), torch.optim.SGD, rho=0.2, adaptive=adaptive,
                          normalize=normalize, lr=0.1, momentum=0.9)

    large_model, large = make()
    micro_model, micro = make()

    def accumulate_micro_batches():
        for xb, yb in zip(torch.split(x, sizes), torch.split(y, sizes)):
            (loss_fn(micro_model(xb), yb) * (len(xb) / len(x))).backward()

    for _ in range(3):
        loss_fn(large_model(x), y).backward()
        large.first_step(zero_grad=True)
        loss_fn(large_model(x), y).backward()
        large.second_step(zero_grad=True)

        accumulate_micro_batches()  # at w
        micro.first_step(zero_grad=True)
        accumulate_micro_batches()  # at w + e, the same micro-batches
        micro.second_step(zero_grad=True)
    for a, b in zip(micro_model.parameters(), large_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(large_model[0].weight, mlp64()[0].weight)


# -- mixed precision ------------------------------------------------------------------------------


def snapshot(model, optimizer):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def assert_same(before, after):
    for key, value in before[0].items():
        torch.testing.assert_close(after[0][key], value, rtol=0, atol=0)
    state_before = before[1]["base_optimizer"]["state"]
    state_after = after[1]["base_optimizer"]["state"]
    assert state_before.keys() == state_after.keys()
    for index in state_before:
        for key, value in state_before[index].items():
            torch.testing.assert_close(state_after[index][key], value, rtol=0, atol=0)


class SharpValley(nn.Module):
    """1/2 w^T diag(1, 1e5) w at w = (0.5, 1e-5): the gradient is ~1 at w, ~1e5 at w + e (rho=1)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, 1e-5]))
        self.register_buffer("curvature", torch.tensor([1.0, 1e5]))

    def forward(self):
        return 0.5 * (self.w * (self.curvature * self.w)).sum()


def scaled_sam_step(model, optimizer, scaler, loss_of):
    scaler.scale(loss_of(model)).backward()
    optimizer.first_step(zero_grad=True, grad_scaler=scaler)
    scaler.scale(loss_of(model)).backward()
    optimizer.second_step(zero_grad=True, grad_scaler=scaler)
    scaler.update()


def test_grad_scaler_skips_overflow_in_the_second_pass():
    model = SharpValley()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=1.0, lr=1e-10, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    for _ in range(2):  # build momentum state
        scaled_sam_step(model, optimizer, scaler, lambda m: m())
    assert not optimizer.skipped_last_step
    before = snapshot(model, optimizer)
    # scaled first-pass gradient ~1e34 is finite in float32 (its squared norm is not: the norm is
    # then taken in float64); the second, ~1e5 times larger, overflows
    scaler.update(new_scale=1e34)
    scaled_sam_step(model, optimizer, scaler, lambda m: m())
    assert torch.isfinite(optimizer.last_grad_norm)
    assert optimizer.skipped_last_step
    assert_same(before, snapshot(model, optimizer))
    expected_norm = (before[0]["curvature"] * before[0]["w"]).norm().item()
    assert optimizer.last_grad_norm.item() == pytest.approx(expected_norm, rel=1e-6)
    assert scaler.get_scale() == pytest.approx(5e33, rel=1e-6)
    # the next step at a sane scale proceeds, from the untouched state
    scaler.update(new_scale=1.0)
    scaled_sam_step(model, optimizer, scaler, lambda m: m())
    assert not optimizer.skipped_last_step
    assert not torch.equal(model.w, before[0]["w"])


def test_grad_scaler_skips_overflow_in_the_first_pass():
    model = SharpValley()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=1.0, lr=1e-10, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    scaled_sam_step(model, optimizer, scaler, lambda m: m())
    before = snapshot(model, optimizer)
    scaler.update(new_scale=float(torch.finfo(torch.float32).max))  # gradient 0.5 * max -> inf
    scaled_sam_step(model, optimizer, scaler, lambda m: 4.0 * m())
    assert optimizer.skipped_last_step
    assert torch.isinf(optimizer.last_grad_norm)
    assert_same(before, snapshot(model, optimizer))


def test_float16_autocast_overflow_is_skipped():
    """A real float16 overflow: the scaled output gradient exceeds float16's 65504."""
    x, y = cnn_batch()
    model = small_cnn()
    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)

    def loss_of(m):
        with torch.autocast("cpu", dtype=torch.float16):
            return nn.functional.cross_entropy(m(x), y)

    before = snapshot(model, optimizer)
    with disable_running_stats(model):  # keep BatchNorm buffers comparable
        scaled_sam_step(model, optimizer, scaler, loss_of)
    assert optimizer.skipped_last_step
    assert_same(before, snapshot(model, optimizer))
    assert optimizer.base_optimizer.state == {} or all(
        s == {} for s in optimizer.base_optimizer.state.values()
    )
    assert scaler.get_scale() == 2.0**29


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scale", [2.0**10, 1e30])
def test_grad_scaler_step_equals_unscaled_step(normalize, scale):
    """first_step reads scaled gradients: it divides by the scale where the formula needs it
    (USAM) and survives a float32 overflow of the squared norm (scale 1e30)."""
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=scale)):
        model = SharpValley()
        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=1e-6, normalize=normalize,
                        lr=1e-6)
        if scaler is None:
            model().backward()
            optimizer.first_step(zero_grad=True)
            model().backward()
            optimizer.second_step(zero_grad=True)
        else:
            scaled_sam_step(model, optimizer, scaler, lambda m: m())
        results.append(model.w.detach().clone())
    assert not torch.equal(results[0], SharpValley().w)
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=0)


def test_bfloat16_autocast_step_agrees_with_float32():
    """Stated tolerance: the bf16 SAM step's change of w within 2% (relative 2-norm) of the
    float32 step's (measured 0.6%, the same as a plain SGD step's bf16 error on this model)."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 20, generator=generator), torch.randint(0, 5, (64,), generator=generator)
    deltas = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                              nn.Tanh(), nn.Linear(32, 5))
        start = [p.detach().clone() for p in model.parameters()]
        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.first_step(zero_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            with disable_running_stats(model):
                nn.functional.cross_entropy(model(x), y).backward()
        optimizer.second_step(zero_grad=True)
        deltas.append(torch.cat([(p.detach() - s).reshape(-1)
                                 for p, s in zip(model.parameters(), start)]))
    relative = (deltas[1] - deltas[0]).norm() / deltas[0].norm()
    assert deltas[0].norm() > 1e-2
    assert relative < 0.02, relative
    assert relative > 0  # autocast really ran in bfloat16


# -- schedulers -----------------------------------------------------------------------------------


def test_scheduler_on_sam_and_ire_changes_the_base_lr_without_warnings():
    model = mlp64()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    loss_fn = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        sam_scheduler = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
        for _ in range(2):
            loss_fn(model(x), y).backward()
            sam.first_step(zero_grad=True)
            loss_fn(model(x), y).backward()
            sam.second_step(zero_grad=True)
            sam_scheduler.step()
        assert sam.base_optimizer.param_groups[0]["lr"] == 0.025

        def closure():
            sam.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        sam2 = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(sam2, T_max=4)
        for _ in range(2):
            sam2.step(closure)
            sched2.step()
        assert sam2.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)

        for inner in (torch.optim.AdamW(model.parameters(), lr=0.1),
                      SAM(model.parameters(), torch.optim.SGD, lr=0.1)):
            ire = IRE(inner, kappa=1.0, gamma=0.5)
            scheduler = torch.optim.lr_scheduler.StepLR(ire, step_size=1, gamma=0.5)
            for _ in range(2):
                if ire.needs_refresh():
                    ire.update_mask([p.detach() ** 2 for p in model.parameters()])
                loss_fn(model(x), y).backward()
                if isinstance(inner, SAM):
                    ire.first_step(zero_grad=True)
                    loss_fn(model(x), y).backward()
                    ire.second_step(zero_grad=True)
                else:
                    ire.step()
                    ire.zero_grad()
                scheduler.step()
            base = inner.base_optimizer if isinstance(inner, SAM) else inner
            assert base.param_groups[0]["lr"] == 0.025


def test_load_state_dict_keeps_groups_shared():
    model = mlp64()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam.load_state_dict(copy.deepcopy(sam.state_dict()))
    sam.param_groups[0]["lr"] = 0.5
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.5


def test_deepcopy_keeps_the_base_optimizer():
    model = mlp64()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    twin = copy.deepcopy(sam)
    assert isinstance(twin.base_optimizer, torch.optim.SGD)
    assert twin.base_optimizer.param_groups is twin.param_groups


# -- misuse and validation ------------------------------------------------------------------------


def test_step_order_errors():
    model = mlp64()
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="second_step"):
        sam.second_step()
    with pytest.raises(RuntimeError, match=r"SAM.step\(\) needs a closure"):
        sam.step()
    model(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    sam.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        sam.first_step()


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(rho=-0.1), ValueError, r"rho must be >= 0, got -0.1"),
        (dict(rho="big"), TypeError, r"rho must be a real number, got 'big'"),
        (dict(rho=float("nan")), ValueError, r"rho must be finite"),
        (dict(adaptive=1), TypeError, r"adaptive must be a bool, got 1"),
        (dict(normalize=None), TypeError, r"normalize must be a bool, got None"),
    ],
)
def test_sam_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SAM(mlp64().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_sam_rejects_a_bad_base_optimizer_and_group_rho():
    params = list(mlp64().parameters())
    with pytest.raises(TypeError,
                       match=r"base_optimizer must be a callable that builds .*'sgd'"):
        SAM(params, "sgd", lr=0.1)
    with pytest.raises(TypeError) as info:
        SAM(params, torch.optim.SGD(params, lr=0.1), lr=0.1)
    assert str(info.value) == ("base_optimizer must build an optimizer (a class such as "
                               "torch.optim.SGD, a functools.partial or a factory), not be one; "
                               "got an instance of SGD")
    with pytest.raises(TypeError, match=r"base_optimizer Linear is a class but not a torch"):
        SAM(params, nn.Linear, lr=0.1)
    with pytest.raises(ValueError, match=r"Adadelta has its own \['rho'\] argument"):
        SAM(params, torch.optim.Adadelta, lr=1.0)
    with pytest.raises(ValueError, match=r"rho must be >= 0, got -1.0"):
        SAM([{"params": params[:2], "rho": -1.0}, {"params": params[2:]}], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="base_optimizer"):
        sam = SAM(params, torch.optim.SGD, lr=0.1)
        sam.load_state_dict(torch.optim.SGD(params, lr=0.1).state_dict())
