"""The seed analysis on a causal attention model with keyword inputs, an output object and padding.

``taylor_check`` and ``sharp_flat_gains`` are compared number by number with the same
quantities built from the dense float64 Hessian and gradient of ``token_models`` (math attention
kernel, computed without samhess), and they leave the model and its optimizer bit-identical.
"""

from __future__ import annotations

import copy

import pytest
import torch
from token_models import (
    loss_of_logits,
    logits_function,
    make_transformer,
    reference_gradient,
    reference_hessian,
    token_batch,
)

from samhess.analysis import sharp_flat_gains, taylor_check, third_derivative, validity_map
from samhess.curvature import TokenCrossEntropy
from samhess.optim import SAM

RHO, LR, K = 0.02, 0.1, 2


@pytest.fixture(scope="module")
def problem():
    model = make_transformer(seed=3)
    batch = token_batch([6, 5, 3, 6], seed=5)
    return model, batch, reference_gradient(model, batch), reference_hessian(model, batch)


def test_taylor_check_equals_its_dense_quantities(problem):
    model, batch, g, hessian = problem
    rhos = [1e-3, 1e-2, 1e-1]
    check = taylor_check(model, TokenCrossEntropy(), batch, rhos)
    grad_norm = float(g.norm())
    assert check.grad_norm == pytest.approx(grad_norm, rel=1e-12)
    assert check.rayleigh_quotient == pytest.approx(float(g @ hessian @ g) / grad_norm**2, rel=1e-10)
    logits_at, point = logits_function(model, batch[0])
    for rho, correction, loss_e in zip(rhos, check.predicted_correction_norms, check.loss_at_perturbation):
        e = rho * g / grad_norm
        assert correction == pytest.approx(float((hessian @ e).norm()), rel=1e-10)
        assert loss_e == pytest.approx(float(loss_of_logits(logits_at(point + e), batch[1])), rel=1e-12)
    assert 0.8 < check.order < 1.2  # a smooth model: the remainder falls like rho


def test_sharp_flat_gains_equal_their_dense_quantities(problem):
    model, batch, g, hessian = problem
    model = copy.deepcopy(model)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.0)
    before = [t.clone() for t in model.state_dict().values()]
    gains = sharp_flat_gains(model, TokenCrossEntropy(), batch, sam, k=K)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))

    values, vectors = torch.linalg.eigh(hessian)
    torch.testing.assert_close(torch.tensor(gains.eigenvalues, dtype=torch.float64), values.flip(0)[:K], rtol=1e-8, atol=0)
    sharp = vectors[:, -K:]
    reference = -LR * g
    predicted = -LR * (g + RHO / g.norm() * hessian @ g)

    def subspace_gain(step, project):
        return float(project(step) @ project(reference) / (project(reference) @ project(reference)))

    on_sharp = lambda v: sharp.T @ v  # noqa: E731
    off_sharp = lambda v: v - sharp @ (sharp.T @ v)  # noqa: E731
    assert gains.predicted_sharp_gain == pytest.approx(subspace_gain(predicted, on_sharp), rel=1e-8)
    assert gains.predicted_flat_gain == pytest.approx(subspace_gain(predicted, off_sharp), rel=1e-8)
    # The real SAM step agrees with its first-order model at this radius.
    assert gains.sharp_gain == pytest.approx(gains.predicted_sharp_gain, rel=0.02)

    smallest = sharp_flat_gains(model, TokenCrossEntropy(), batch, sam, k=K, flat="smallest")
    expected = values[values.abs().argsort()[:K]]
    torch.testing.assert_close(torch.tensor(smallest.flat_eigenvalues, dtype=torch.float64), expected, rtol=0, atol=1e-10)


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = torch.nn.Linear(3, 4), torch.nn.Linear(2, 4)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.left(left)) * self.right(right)


def test_an_analysis_batch_is_one_batch_even_when_inputs_and_targets_are_pairs():
    """``((left, right), (labels, scale))`` is one batch to the analysis, not two."""
    torch.manual_seed(6)
    model = TwoInputs().double()
    left, right = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    labels = torch.randint(0, 4, (8,))
    scale = torch.tensor(0.5, dtype=torch.float64)

    def loss_fn(outputs, targets):
        return targets[1] * torch.nn.functional.cross_entropy(outputs, targets[0])

    check = taylor_check(model, loss_fn, ((left, right), (labels, scale)), [1e-3, 1e-2])
    model.zero_grad()
    loss_fn(model(left, right), (labels, scale)).backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert check.grad_norm == pytest.approx(float(gradient.norm()), rel=1e-12)


def test_third_derivative_of_a_model_with_several_inputs_against_finite_differences():
    """grad^3 L[u, u] = d^2/dt^2 grad L(w + t u) at 0, by central differences (error O(t^2)) of
    gradients from torch.func, a path independent of the library's; the model is called as
    model(left, right)."""
    torch.manual_seed(6)
    model = TwoInputs().double()
    left, right = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    labels = torch.randint(0, 4, (8,))
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    point = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        values = {n: c.view(s) for n, c, s in
                  zip(names, torch.split(flat, [s.numel() for s in shapes]), shapes)}
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(model, values, (left, right)), labels)

    gradient = torch.func.grad(loss)
    u = torch.randn(point.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = u / u.norm()
    t = 1e-3
    finite = (gradient(point + t * u) - 2 * gradient(point) + gradient(point - t * u)) / t**2
    exact = third_derivative(model, torch.nn.functional.cross_entropy, ((left, right), labels), u)
    assert float((exact - finite).norm() / exact.norm()) < 1e-5


def test_analysis_refuses_a_wrong_batch_before_touching_anything(problem):
    model, batch, _, _ = problem
    model = copy.deepcopy(model)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    before = [t.clone() for t in model.state_dict().values()]
    collated = {**batch[0], "labels": batch[1]}
    with pytest.raises(TypeError, match=r"batch must be an \(inputs, targets\) pair, got a dict with keys \['input_ids'"):
        sharp_flat_gains(model, TokenCrossEntropy(), collated, sam, k=K)
    with pytest.raises(TypeError, match=r"the inputs of batch must be a tensor .* got a str"):
        taylor_check(model, TokenCrossEntropy(), ("input_ids", batch[1]), [1e-2])
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert not sam.state


def test_validity_map_takes_sub_batches_of_keyword_batches(problem):
    """The sub-batch of 2 sequences is the one its seeded permutation picks: same lambda_max."""
    model, batch, _, _ = problem
    result = validity_map(model, TokenCrossEntropy(), batch, rhos=[0.01], batch_sizes=[2, None], k=1, seed=3)
    chosen = torch.randperm(4, generator=torch.Generator().manual_seed(3))[:2]
    sub_batch = ({key: value[chosen] for key, value in batch[0].items()}, batch[1][chosen])
    by_size = {summary.batch_size: summary.lambda_max for summary in result.summaries}
    dense = torch.linalg.eigvalsh(reference_hessian(model, sub_batch))[-1]
    assert by_size[2] == pytest.approx(float(dense), rel=1e-8)
    assert by_size[4] == pytest.approx(float(torch.linalg.eigvalsh(problem[3])[-1]), rel=1e-8)
