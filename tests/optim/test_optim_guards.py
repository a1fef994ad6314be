"""No silent no-ops, no half-loaded state: ``raise_on_nonfinite``, IRE's gamma check, and
``load_state_dict`` of SAM and IRE all or nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from samhess.errors import DivergenceError
from samhess.optim import IRE, SAM


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _batch():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, generator=generator, dtype=torch.float64),
            torch.randn(8, 1, generator=generator, dtype=torch.float64))


def _backward(model: nn.Module, poison: bool = False) -> None:
    x, y = _batch()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    if poison:
        model[0].weight.grad[0, 0] = float("nan")


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _state_equal(a, b) -> bool:
    """Deep equality of two state dicts holding tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _state_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_sam_without_the_option_turns_weights_nan_as_torch_does():
    model = _model()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    _backward(model, poison=True)
    sam.first_step(zero_grad=True)
    _backward(model)
    model[0].weight.grad[0, 0] = float("nan")
    sam.second_step()
    assert torch.isnan(model[0].weight).any()


@pytest.mark.parametrize("where", ["at w", "at w + e"])
def test_sam_raises_on_a_nonfinite_gradient_and_leaves_w_and_state(where):
    model = _model()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
              raise_on_nonfinite=True)
    _backward(model)  # one clean step, so the momentum buffers exist
    sam.first_step(zero_grad=True)
    _backward(model)
    sam.second_step(zero_grad=True)
    weights, state = _snapshot(model), copy.deepcopy(sam.state_dict())

    _backward(model, poison=where == "at w")
    if where == "at w":
        with pytest.raises(DivergenceError, match="SAM: the gradient at w holds inf or NaN"):
            sam.first_step(zero_grad=True)
    else:
        sam.first_step(zero_grad=True)
        assert not _same(weights, _snapshot(model))  # at w + e now
        _backward(model, poison=True)
        with pytest.raises(DivergenceError, match=r"at w \+ e holds inf or NaN"):
            sam.second_step()
    assert _same(weights, _snapshot(model))
    assert _state_equal(state, sam.state_dict())
    # Nothing is left pending: the next step runs.
    sam.zero_grad()
    _backward(model)
    sam.first_step(zero_grad=True)
    _backward(model)
    sam.second_step()


def test_sam_closure_path_raises_at_w_plus_e_and_returns_to_w():
    model = _model()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, raise_on_nonfinite=True)
    weights = _snapshot(model)
    calls = []

    def closure():
        sam.zero_grad()
        x, y = _batch()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        calls.append(1)
        if len(calls) == 2:
            model[2].bias.grad.fill_(float("inf"))
        return loss

    with pytest.raises(DivergenceError):
        sam.step(closure)
    assert len(calls) == 2 and _same(weights, _snapshot(model))


@pytest.mark.parametrize("inner", ["sgd", "sam-two-step", "sam-closure", "sgd-closure"])
def test_ire_raises_on_a_nonfinite_gradient_before_any_weight_moves(inner):
    model = _model()
    base = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1) if inner.startswith("sam")
            else torch.optim.SGD(model.parameters(), lr=0.1))
    ire = IRE(base, kappa=1.0, gamma=0.5, raise_on_nonfinite=True)
    ire.update_mask([torch.rand_like(p) for p in model.parameters()])
    weights, state = _snapshot(model), copy.deepcopy(ire.state_dict())
    if inner == "sam-two-step":
        _backward(model)
        ire.first_step(zero_grad=True)
        _backward(model, poison=True)
        with pytest.raises(DivergenceError, match=r"at w \+ e"):
            ire.second_step()
        assert base.raise_on_nonfinite is False  # IRE only lent its check for the step
    elif inner.endswith("closure"):
        def closure():
            ire.zero_grad()
            _backward(model, poison=True)
            return torch.tensor(0.0)

        with pytest.raises(DivergenceError):
            ire.step(closure)
    else:
        _backward(model, poison=True)
        with pytest.raises(DivergenceError, match="IRE: the gradient at w"):
            ire.step()
    assert _same(weights, _snapshot(model))
    assert ire.step_count == 0
    assert _state_equal(state, ire.state_dict())


def test_ire_refuses_a_gamma_that_selects_no_coordinate():
    model = _model()  # 4*3 + 4 + 4 + 1 = 21 coordinates
    assert sum(p.numel() for p in model.parameters()) == 21
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"gamma 0\.02 selects no coordinate of the n = 21 "
                                         r"coordinates: round\(gamma \* n\) = 0.*0\.5 / n = 0\.0238"):
        IRE(sgd, kappa=1.0, gamma=0.02)
    IRE(sgd, kappa=1.0, gamma=0.03)  # round(0.63) = 1 coordinate: accepted
    # Per tensor: round(gamma * n_i) for n_i in 12, 4, 4, 1 is 0 for gamma = 0.04.
    with pytest.raises(ValueError, match="in any parameter tensor"):
        IRE(sgd, kappa=1.0, gamma=0.04, per_tensor=True)
    ire = IRE(sgd, kappa=1.0, gamma=0.5)
    with pytest.raises(ValueError, match="selects no coordinate"):
        ire.gamma = 0.01
    assert ire.gamma == 0.5


def _trained_sam_ire(model):
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    ire = IRE(sam, kappa=1.0, gamma=0.5)
    for _ in range(2):
        if ire.needs_refresh():
            ire.update_mask([torch.rand_like(p) for p in model.parameters()])
        _backward(model)
        ire.first_step(zero_grad=True)
        _backward(model)
        ire.second_step(zero_grad=True)
    return sam, ire


@pytest.mark.parametrize("damage", [
    ("hyperparameters", "gamma", 2.0),
    ("hyperparameters", "gamma", 0.001),
    ("step_count", None, -1),
    ("mask", None, "wrong shapes"),
    ("optimizer", "param_groups", "two groups"),
    ("optimizer", "base_optimizer", "two groups"),
])
def test_ire_load_state_dict_changes_nothing_when_it_fails(damage):
    model = _model()
    sam, ire = _trained_sam_ire(model)
    saved = copy.deepcopy(ire.state_dict())
    other_model = _model()
    _, other = _trained_sam_ire(other_model)
    before = copy.deepcopy(ire.state_dict())
    bad = copy.deepcopy(other.state_dict())
    key, inner, value = damage
    if key == "hyperparameters":
        bad[key][inner] = value
    elif key == "mask":
        bad["mask"] = [torch.ones(2) for _ in bad["mask"]]
    elif key == "optimizer":
        target = bad["optimizer"] if inner == "param_groups" else bad["optimizer"]["base_optimizer"]
        target["param_groups"] = target["param_groups"] * 2
    else:
        bad[key] = value
    with pytest.raises((ValueError, TypeError)):
        ire.load_state_dict(bad)
    assert _state_equal(before, ire.state_dict())
    assert sam.base_optimizer.param_groups is sam.param_groups is ire.param_groups
    ire.load_state_dict(saved)  # and a good one still loads
    assert _state_equal(saved, ire.state_dict())


def test_sam_load_state_dict_changes_nothing_when_the_base_part_fails():
    model = _model()
    sam, _ = _trained_sam_ire(model)
    before = copy.deepcopy(sam.state_dict())
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["lr"] = 123.0  # SAM's part would load ...
    bad["base_optimizer"]["param_groups"] = bad["base_optimizer"]["param_groups"] * 2  # ... not this
    with pytest.raises(ValueError):
        sam.load_state_dict(bad)
    assert _state_equal(before, sam.state_dict())
    assert sam.param_groups[0]["lr"] == 0.1
    assert sam.base_optimizer.param_groups is sam.param_groups


@pytest.mark.parametrize("variant", ["GSAM", "LookSAM", "FriendlySAM"])
def test_variants_take_the_option_and_raise_before_the_base_step(variant):
    """The check sits in SAM's step, which every variant runs: the gradient of the step (at
    w + e, or at w on a single-pass step) is checked once the weights are back at w."""
    import samhess.optim

    model = _model()
    optimizer = getattr(samhess.optim, variant)(model.parameters(), torch.optim.SGD, lr=0.1,
                                                raise_on_nonfinite=True)
    weights = _snapshot(model)
    _backward(model)
    two_pass = optimizer.first_step(zero_grad=True)
    _backward(model, poison=True)
    with pytest.raises(DivergenceError, match="at w" + (r" \+ e" if two_pass else "")):
        optimizer.second_step()
    assert _same(weights, _snapshot(model))
