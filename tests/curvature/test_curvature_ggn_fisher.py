"""GGN and sampled-label Fisher operators, and the Gauss-Newton-Bartlett diagonal."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samhess.curvature import FisherOperator, GGNOperator, detect_loss_kind, diagonal, fisher_diagonal, flatten
from samhess.curvature.losses import output_gradients, sample_targets

from curvature_reference import (
    MODEL_NAMES,
    build_problem,
    make_batch,
    make_mlp,
    reference_ggn,
    relative_error,
)


class TokenModel(nn.Module):
    """Per-position logits ``(N, T, C)`` from inputs ``(N, T, D)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.layer = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(inputs)))


def token_problem():
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(6, 5, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (6, 5), generator=generator)
    loss_fn = lambda outputs, targets: F.cross_entropy(outputs.reshape(-1, 3), targets.reshape(-1))  # noqa: E731
    return TokenModel().double(), loss_fn, (inputs, targets)


def mse_problem():
    model = make_mlp()
    inputs, _ = make_batch(5)
    targets = torch.randn(inputs.shape[0], 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    return model, nn.MSELoss(), (inputs, targets)


PROBLEMS = {name: functools.partial(build_problem, name) for name in MODEL_NAMES}
PROBLEMS.update(tokens=token_problem, mse=mse_problem)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_ggn_equals_jacobian_sandwich(name):
    model, loss_fn, batch = PROBLEMS[name]()
    expected = reference_ggn(model, loss_fn, *batch)
    G = GGNOperator(model, loss_fn, batch)
    assert relative_error(G.to_dense(), expected) < 1e-12
    assert torch.linalg.eigvalsh(expected).min() > -1e-12 * expected.abs().max()


def test_ggn_loader_weighting():
    model, loss_fn, (inputs, targets) = build_problem("cnn")
    whole = GGNOperator(model, loss_fn, (inputs, targets)).to_dense()
    batches = [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])]
    assert relative_error(GGNOperator(model, loss_fn, batches).to_dense(), whole) < 1e-12


def _fisher_from_samples(model, kind, inputs, residuals):
    """(1/(S M)) sum_{s,m} J_m^T r r^T J_m from the full Jacobian."""
    named = dict(model.named_parameters())
    sizes = [p.numel() for p in named.values()]

    def outputs_of(flat):
        values = {n: c.view(p.shape) for (n, p), c in zip(named.items(), torch.split(flat, sizes))}
        return torch.func.functional_call(model, values, (inputs,))

    point = torch.cat([p.detach().reshape(-1) for p in named.values()])
    jacobian = torch.autograd.functional.jacobian(outputs_of, point)  # (*outputs.shape, dim)
    width = residuals.shape[-1]
    rows = jacobian.reshape(-1, width, point.numel())  # (M, d, dim)
    per_sample = torch.einsum("mdp,smd->smp", rows, residuals)  # r^T J_m per sample and row
    return torch.einsum("smp,smq->pq", per_sample, per_sample) / (residuals.shape[0] * residuals.shape[1])


@pytest.mark.parametrize("name", ["mlp", "tokens", "mse"])
def test_fisher_operator_is_its_sampled_sum(name):
    model, loss_fn, batch = PROBLEMS[name]()
    kind = detect_loss_kind(loss_fn, "cross_entropy" if name == "tokens" else None)
    Fop = FisherOperator(model, loss_fn, batch, loss_kind=kind, num_samples=3, seed=7)
    dense = Fop.to_dense()
    generator = torch.Generator().manual_seed(7)
    outputs = model(batch[0]).detach()
    residuals = torch.stack(
        [output_gradients(outputs, sample_targets(outputs, kind, generator), kind) for _ in range(3)]
    )
    assert relative_error(dense, _fisher_from_samples(model, kind, batch[0], residuals)) < 1e-12
    # The same draw for every product: the matrix is symmetric and reproducible.
    assert relative_error(dense, dense.T) < 1e-12
    assert relative_error(Fop.to_dense(), dense) == 0


@pytest.mark.parametrize("name", ["mlp", "mse"])
def test_fisher_quadratic_form_is_unbiased_for_ggn(name):
    model, loss_fn, batch = PROBLEMS[name]()
    ggn = reference_ggn(model, loss_fn, *batch)
    v = torch.randn(ggn.shape[0], generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    forms = torch.tensor(
        [float(v @ (FisherOperator(model, loss_fn, batch, seed=seed) @ v)) for seed in range(300)]
    )
    stderr = forms.std() / 300**0.5
    assert abs(forms.mean() - v @ ggn @ v) < 3 * stderr


def _z_scores(draws: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    stderr = draws.std(dim=0) / draws.shape[0] ** 0.5
    mask = stderr > 0
    return (draws.mean(dim=0) - truth)[mask] / stderr[mask]


@pytest.mark.parametrize("name", ["cnn", "tokens", "mse"])
def test_gauss_newton_bartlett_is_unbiased_for_ggn_diagonal(name):
    model, loss_fn, batch = PROBLEMS[name]()
    kind = "cross_entropy" if name == "tokens" else None
    truth = reference_ggn(model, loss_fn, *batch).diagonal()
    generator = torch.Generator().manual_seed(9)
    draws = torch.stack(
        [flatten(fisher_diagonal(model, loss_fn, batch, generator=generator, loss_kind=kind)) for _ in range(400)]
    )
    # Unbiased: every coordinate's mean is within 5 standard errors, their sum within 3.
    assert _z_scores(draws, truth).abs().max() < 5
    assert _z_scores(draws.sum(dim=1, keepdim=True), truth.sum().reshape(1)).abs().item() < 3
    averaged = fisher_diagonal(
        model, loss_fn, batch, num_samples=400, generator=torch.Generator().manual_seed(9), loss_kind=kind
    )
    assert [t.shape for t in averaged] == [p.shape for p in model.parameters()]
    assert min(float(t.min()) for t in averaged) >= 0


def test_empirical_fisher_fails_the_same_check():
    """The bound above can fail: the empirical Fisher (true labels) is a biased GGN diagonal."""
    model, loss_fn, batch = PROBLEMS["cnn"]()
    truth = reference_ggn(model, loss_fn, *batch).diagonal()
    generator = torch.Generator().manual_seed(9)
    draws = torch.stack([flatten(fisher_diagonal(model, loss_fn, batch, generator=generator)) for _ in range(400)])
    stderr = draws.std(dim=0) / 400**0.5
    inputs, targets = batch
    empirical = torch.zeros_like(truth)
    for example in range(inputs.shape[0]):
        model.zero_grad()
        loss_fn(model(inputs[example : example + 1]), targets[example : example + 1]).backward()
        empirical += flatten([p.grad for p in model.parameters()]).square() / inputs.shape[0]
    mask = stderr > 0
    assert ((empirical - truth)[mask] / stderr[mask]).abs().max() > 5


def test_gnb_through_diagonal_and_modes():
    model, loss_fn, batch = build_problem("cnn")
    model.train()
    expected = fisher_diagonal(model, loss_fn, batch, num_samples=5, generator=torch.Generator().manual_seed(3))
    G = GGNOperator(model, loss_fn, batch)
    assert torch.equal(diagonal(G, "gnb", num_matvecs=5, seed=3), flatten(expected))
    assert model.training
    with pytest.raises(ValueError, match="GGNOperator or FisherOperator"):
        from samhess.curvature import HessianOperator

        diagonal(HessianOperator(model, loss_fn, batch), "gnb")


def test_loss_kind_detection():
    class Tokens(nn.CrossEntropyLoss):
        pass

    assert detect_loss_kind(nn.CrossEntropyLoss()) == "cross_entropy"
    assert detect_loss_kind(Tokens(label_smoothing=0.1)) == "cross_entropy"
    assert detect_loss_kind(F.cross_entropy) == "cross_entropy"
    assert detect_loss_kind(functools.partial(F.mse_loss)) == "mse"
    assert detect_loss_kind(nn.MSELoss()) == "mse"
    assert detect_loss_kind(lambda o, t: 0, "mse") == "mse"
    with pytest.raises(ValueError, match="reduction='sum'"):
        detect_loss_kind(nn.MSELoss(reduction="sum"))
    with pytest.raises(ValueError, match="pass loss_kind"):
        detect_loss_kind(nn.L1Loss())
    with pytest.raises(ValueError, match="loss_kind must be one of"):
        detect_loss_kind(nn.MSELoss(), "poisson")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fisher_diagonal(make_mlp(), nn.MSELoss(), make_batch(5), num_samples=0)
