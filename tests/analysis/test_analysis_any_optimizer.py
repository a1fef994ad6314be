"""The seed's lens on optimizers samhess did not write, and predictions registered by exact type.

A third-party SAM in the style most users copy (``step(closure)`` starts from the gradient
already in ``.grad``, runs the closure once at w + e) must be measured exactly as samhess's SAM.
An optimizer with no registered prediction gets none, even when it subclasses one that has one.
"""

from __future__ import annotations

import pytest
import torch

from samhess.analysis import directional_gains, measure_steps, sharp_flat_gains
from samhess.analysis import predictions
from samhess.analysis.predictions import FirstOrderPrediction, StepForm, register_prediction
from samhess.curvature import HessianOperator, eigenpairs
from samhess.optim import ASAM, SAM

LR = 0.1
RHO = 0.05


class ThirdPartySAM(torch.optim.Optimizer):
    """SAM as often written outside samhess: ``step(closure)`` perturbs with the gradient that is
    already present, then calls the closure once, at w + e, under ``no_grad``."""

    def __init__(self, params, rho: float, lr: float) -> None:
        super().__init__(params, {"rho": rho, "lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        saved = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                saved[p] = p.detach().clone()
                p.add_(p.grad * group["rho"] / norm)
        closure()  # the caller's closure must enable grad itself
        for group in self.param_groups:
            for p in group["params"]:
                if p in saved:
                    p.copy_(saved[p])
                    p.add_(p.grad, alpha=-group["lr"])


def _stale_gradients(model):
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.37)


def test_third_party_sam_measured_like_samhess_sam(digits_mlp, digits_batch):
    model, loss_fn = digits_mlp
    ours = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    theirs = ThirdPartySAM(model.parameters(), rho=RHO, lr=LR)
    top = eigenpairs(HessianOperator(model, loss_fn, digits_batch), 5, seed=0)

    expected = sharp_flat_gains(model, loss_fn, digits_batch, ours, k=5, sharp=top)
    expected_gains = directional_gains(model, loss_fn, digits_batch, ours, top)
    for stale in (False, True):
        if stale:  # a leftover gradient from another batch must not be what it perturbs with
            _stale_gradients(model)
        before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        measured = sharp_flat_gains(model, loss_fn, digits_batch, theirs, k=5, sharp=top)
        gains = directional_gains(model, loss_fn, digits_batch, theirs, top)
        assert measured.ratio == pytest.approx(expected.ratio, rel=1e-9)
        assert measured.sharp_gain == pytest.approx(expected.sharp_gain, rel=1e-9)
        assert measured.flat_gain == pytest.approx(expected.flat_gain, rel=1e-9)
        assert gains.gains == pytest.approx(expected_gains.gains, rel=1e-9)
        # the gradients are put back as they were, stale ones included
        for b, p in zip(before, model.parameters()):
            assert (b is None and p.grad is None) or torch.equal(b, p.grad)
    # no rule is registered for the third-party class: no prediction, never SAM's
    assert measured.predicted_ratio is None and expected.predicted_ratio is not None
    assert gains.predictions is None


def test_prediction_is_not_inherited(quadratic, monkeypatch):
    """A SAM subclass that changes the update has no prediction until one is registered for it."""
    model, loss_fn, batch, _, _, vectors = quadratic

    class ScaledSAM(SAM):
        pass

    class MySGD(torch.optim.SGD):
        pass

    scaled = ScaledSAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    assert measure_steps(model, loss_fn, batch, scaled).prediction is None
    assert measure_steps(model, loss_fn, batch, MySGD(model.parameters(), lr=LR)).prediction is None

    def rule(optimizer, context):
        return FirstOrderPrediction(StepForm.GRADIENT, -context.rates * context.gradient, 0.0)

    monkeypatch.setitem(predictions._RULES, ScaledSAM, rule)
    prediction = measure_steps(model, loss_fn, batch, scaled).prediction
    assert prediction is not None and prediction.form is StepForm.GRADIENT
    with pytest.raises(TypeError, match="must be a class"):
        register_prediction(scaled, rule)


def test_asam_prediction_exact_on_quadratic(quadratic):
    """ASAM over SGD: D = -lr (g + A e), e = rho |w|^2 g / || |w| g ||, exact on a quadratic; the
    gains are one value per direction, not a line in lambda."""
    model, loss_fn, batch, matrix, eigenvalues, vectors = quadratic
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = matrix @ w
    asam = ASAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=LR)
    result = directional_gains(model, loss_fn, batch, asam, vectors, eigenvalues=eigenvalues)
    e = 0.5 * w.abs() ** 2 * g / (w.abs() * g).norm()
    expected = (vectors.T @ (g + matrix @ e)) / (vectors.T @ g)
    assert not result.predictions_linear_in_eigenvalue
    assert torch.allclose(torch.tensor(result.predictions, dtype=torch.float64), expected,
                          rtol=1e-10, atol=0)
    assert torch.allclose(torch.tensor(result.gains, dtype=torch.float64), expected,
                          rtol=1e-8, atol=0)
