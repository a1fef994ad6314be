"""Loss-landscape slices: exact on a quadratic, filter normalization, and the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samhess.analysis import filter_normalized_direction, loss_landscape


def _least_squares():
    torch.manual_seed(1)
    model = nn.Linear(5, 1).double()
    inputs = torch.randn(30, 5, dtype=torch.float64)
    targets = torch.randn(30, 1, dtype=torch.float64)
    return model, nn.MSELoss(), (inputs, targets)


def test_the_eigenvector_slice_is_the_quadratic_it_must_be():
    # MSE of a linear model is a quadratic in (W, b): L(w + a v) = L + a <g, v> + a^2 lambda / 2
    model, loss_fn, batch = _least_squares()
    design = torch.cat([batch[0], torch.ones(30, 1, dtype=torch.float64)], dim=1)
    hessian = 2.0 * design.T @ design / 30
    values, vectors = torch.linalg.eigh(hessian)
    top, v = float(values[-1]), vectors[:, -1]
    with torch.no_grad():
        residual = model(batch[0]) - batch[1]
        loss = float(loss_fn(model(batch[0]), batch[1]))
    gradient = 2.0 * design.T @ residual.squeeze(1) / 30
    before = [p.detach().clone() for p in model.parameters()]
    slices = loss_landscape(model, loss_fn, batch, top_eigenvector=3.0 * v, top_eigenvalue=top,
                            points=7, radius=0.6, seed=0)
    assert slices.offsets == pytest.approx([-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6])
    expected = [loss + a * float(gradient @ v) + 0.5 * a * a * top for a in slices.offsets]
    assert slices.along_top_eigenvector == pytest.approx(expected, rel=1e-12)
    assert slices.top_eigenvalue == top and slices.loss == pytest.approx(loss, rel=1e-14)
    assert slices.evaluations == 7 * 7 + 2 * 7 + 1
    # the centre of the plane and of the random slice is the model itself, which is untouched
    assert slices.plane[3][3] == pytest.approx(loss, rel=1e-14)
    assert slices.along_random_direction[3] == pytest.approx(loss, rel=1e-14)
    assert slices.plane[3] == pytest.approx(slices.along_random_direction, rel=1e-14)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_filter_normalized_directions_have_the_weights_filter_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    params = list(model.parameters())
    direction = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for weight, d in zip(params, direction):
        assert d.shape == weight.shape
        if weight.dim() < 2:  # biases are left out (Li et al.)
            assert torch.count_nonzero(d) == 0
            continue
        norms = weight.detach().reshape(weight.shape[0], -1).norm(dim=1)
        assert d.reshape(d.shape[0], -1).norm(dim=1) == pytest.approx(norms.tolist(), rel=1e-5)
    # a different draw is a different direction with the same filter norms
    other = filter_normalized_direction(params, torch.Generator().manual_seed(1))
    assert not torch.allclose(direction[0], other[0])


def test_landscape_arguments_are_checked():
    model, loss_fn, batch = _least_squares()
    with pytest.raises(ValueError, match="points must be >= 3"):
        loss_landscape(model, loss_fn, batch, points=2)
    with pytest.raises(ValueError, match="radius must be > 0"):
        loss_landscape(model, loss_fn, batch, radius=0.0)
    with pytest.raises(ValueError, match="top_eigenvector must be flat with 6 entries"):
        loss_landscape(model, loss_fn, batch, top_eigenvector=torch.ones(5))
    with pytest.raises(TypeError, match="one \\(inputs, targets\\) pair"):
        loss_landscape(model, loss_fn, [batch, batch])
