"""SAM over any optimizer builder (class, functools.partial, factory); IRE's defaults for
momentum-cycling schedulers and for add_param_group."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from samhess.optim import IRE, SAM


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(32, 5, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (32,), generator=generator))


def train_sam(model, optimizer, steps=4):
    x, y = data()
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def adamw_factory(param_groups, **kwargs):
    return torch.optim.AdamW(param_groups, **kwargs)


@pytest.mark.parametrize(
    "builder,base,kwargs",
    [
        # timm.optim.get_optimizer_class("sgd") binds nesterov=True into a partial of SGD
        (functools.partial(torch.optim.SGD, nesterov=True), torch.optim.SGD,
         dict(lr=0.1, momentum=0.9)),
        (functools.partial(torch.optim.SGD, momentum=0.9), torch.optim.SGD, dict(lr=0.1)),
        (adamw_factory, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ],
)
def test_sam_over_a_builder_equals_sam_over_the_class(builder, base, kwargs):
    bound = getattr(builder, "keywords", {})
    model_a, model_b = mlp(), mlp()
    via_builder = SAM(model_a.parameters(), builder, rho=0.05, **kwargs)
    via_class = SAM(model_b.parameters(), base, rho=0.05, **bound, **kwargs)
    assert type(via_builder.base_optimizer) is base
    assert via_builder.param_groups[0] is via_builder.base_optimizer.param_groups[0]
    assert torch.equal(train_sam(model_a, via_builder), train_sam(model_b, via_class))


def test_sam_refuses_builders_that_cannot_build_its_base_optimizer():
    params = list(mlp().parameters())
    with pytest.raises(TypeError, match=r"base_optimizer <lambda> must build a torch.optim.Optimizer, "
                                        r"got dict"):
        SAM(params, lambda groups, **kwargs: {"groups": groups}, lr=0.1)
    other = list(mlp(seed=1).parameters())
    with pytest.raises(ValueError, match=r"built an optimizer over other parameters than the 4"):
        SAM(params, lambda groups, **kwargs: torch.optim.SGD(other, **kwargs), lr=0.1)
    with pytest.raises(ValueError, match=r"functools.partial\(<class 'torch.optim.adadelta."
                                         r"Adadelta'>.*has its own \['rho'\] argument"):
        SAM(params, functools.partial(torch.optim.Adadelta, weight_decay=0.0), lr=1.0)


# -- IRE keeps the wrapped optimizer's defaults ---------------------------------------------------

def ire_over(kind: str, model: nn.Module) -> tuple[IRE, torch.optim.Optimizer]:
    """IRE over ``kind`` and, on a copy of the parameters, the plain optimizer of the same kind."""
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    if kind == "sgd":
        inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        plain = torch.optim.SGD(twin, lr=0.1, momentum=0.9)
    elif kind == "sam":
        inner = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
        plain = torch.optim.SGD(twin, lr=0.1, momentum=0.9)
    else:
        inner = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.99))
        plain = torch.optim.AdamW(twin, lr=0.01, betas=(0.9, 0.99))
    return IRE(inner, kappa=1.0, gamma=0.5), plain


def momentum_of(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


# the schedulers step here without optimizer steps, which they warn about
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("kind", ["sgd", "sam", "adamw"])
@pytest.mark.parametrize("schedule", ["one-cycle", "cyclic"])
def test_momentum_cycling_schedulers_drive_ire_as_its_base(kind, schedule):
    model = mlp()
    ire, plain = ire_over(kind, model)
    assert ire.defaults is ire.optimizer.defaults

    def scheduler(optimizer):
        if schedule == "one-cycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=10)
        return torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.01, max_lr=0.5,
                                                 step_size_up=3, base_momentum=0.8,
                                                 max_momentum=0.95)

    on_ire, on_plain = scheduler(ire), scheduler(plain)
    seen = set()
    for _ in range(6):
        group, reference = ire.param_groups[0], plain.param_groups[0]
        assert group["lr"] == reference["lr"]
        assert momentum_of(group) == momentum_of(reference)
        seen.add(momentum_of(group))
        on_ire.step()
        on_plain.step()
    assert len(seen) == 6  # the momentum really cycled


@pytest.mark.parametrize("kind", ["sgd", "sam"])
def test_add_param_group_fills_the_group_from_the_inner_defaults(kind):
    torch.manual_seed(0)
    first, second = nn.Linear(4, 3).double(), nn.Linear(3, 2).double()
    twin_first, twin_second = (nn.Linear(4, 3).double(), nn.Linear(3, 2).double())
    twin_first.load_state_dict(first.state_dict())
    twin_second.load_state_dict(second.state_dict())

    def build(groups):
        if kind == "sam":
            return SAM(groups, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)

    grown = IRE(build(first.parameters()), kappa=1.0, gamma=0.5, refresh_every=2)
    grown.update_mask([p.detach().abs() for p in first.parameters()])
    grown.add_param_group({"params": list(second.parameters())})
    group = grown.param_groups[-1]
    assert grown.optimizer.param_groups[-1] is group
    assert (group["lr"], group["momentum"]) == (0.1, 0.9)
    if kind == "sam":
        assert group["rho"] == 0.05
    assert grown.mask is None and grown.needs_refresh()

    whole = IRE(build([{"params": list(twin_first.parameters())},
                       {"params": list(twin_second.parameters())}]),
                kappa=1.0, gamma=0.5, refresh_every=2)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for ire, (a, b) in ((grown, (first, second)), (whole, (twin_first, twin_second))):
        for _ in range(3):
            if ire.needs_refresh():
                ire.update_mask([p.detach().abs() + 0.1 for g in ire.param_groups
                                 for p in g["params"]])
            if kind == "sam":
                b(torch.tanh(a(x))).pow(2).mean().backward()
                ire.first_step(zero_grad=True)
                b(torch.tanh(a(x))).pow(2).mean().backward()
                ire.second_step(zero_grad=True)
            else:
                ire.zero_grad()
                b(torch.tanh(a(x))).pow(2).mean().backward()
                ire.step()
    for p, q in zip([*first.parameters(), *second.parameters()],
                    [*twin_first.parameters(), *twin_second.parameters()]):
        assert torch.equal(p, q)


def test_add_param_group_refuses_a_zero_lr_when_kappa_follows_lr():
    torch.manual_seed(0)
    ire = IRE(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), kappa=1.0, gamma=0.5,
              kappa_follows_lr=True)
    with pytest.raises(ValueError, match=r"nonzero initial learning rate, got lr = 0.0"):
        ire.add_param_group({"params": list(nn.Linear(2, 1).parameters()), "lr": 0.0})
    assert len(ire.param_groups) == 1
