"""Diagonal estimators, stochastic Lanczos quadrature, dense Hessians and data averaging."""

from __future__ import annotations

import math

import pytest
import torch

from samhess.curvature import HessianOperator, diagonal, mean_over_data, plot_spectral_density, spectral_density
from samhess.curvature.trace import rademacher

from curvature_reference import MODEL_NAMES, build_problem, reference_hessian, relative_error


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_exact_diagonal_equals_dense(name):
    model, loss_fn, batch = build_problem(name)
    H = HessianOperator(model, loss_fn, batch)
    expected = reference_hessian(model, loss_fn, *batch).diagonal()
    assert relative_error(diagonal(H, "exact", block_size=50), expected) < 1e-12
    assert H.num_matvecs == H.dim


def test_hutchinson_diagonal_is_unbiased():
    model, loss_fn, batch = build_problem("mlp")
    matrix = reference_hessian(model, loss_fn, *batch)
    draws = torch.stack([diagonal(matrix, num_matvecs=1, seed=seed) for seed in range(400)])
    # Entry i of one draw has variance sum_{l != i} H_il^2.
    variance = matrix.square().sum(dim=1) - matrix.diagonal().square()
    z = (draws.mean(dim=0) - matrix.diagonal()) / (variance / 400).sqrt()
    assert z.abs().max() < 5
    assert 0.8 < float(z.square().mean()) < 1.25  # 135 nearly independent coordinates
    assert relative_error(diagonal(matrix, num_matvecs=400), matrix.diagonal()) < relative_error(
        diagonal(matrix, num_matvecs=10), matrix.diagonal()
    )


def test_diagonal_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        diagonal(torch.eye(3), "bekas")
    with pytest.raises(ValueError, match="num_matvecs must be >= 1"):
        diagonal(torch.eye(3), num_matvecs=0)


def test_density_of_known_spectrum():
    # Eigenvalues 1, 2, 3, 4 with multiplicities 10, 20, 30, 40 on the diagonal: Rademacher
    # entries square to one, so after 4 Lanczos steps (the Krylov space is then exhausted) the
    # quadrature weights equal the multiplicity fractions exactly.
    values = torch.repeat_interleave(torch.arange(1.0, 5.0, dtype=torch.float64), torch.tensor([10, 20, 30, 40]))
    result = spectral_density(torch.diag(values), num_probes=3, lanczos_steps=10, grid=2000)
    assert result.num_matvecs == 12  # breakdown after 4 steps per probe
    assert torch.allclose(result.nodes, torch.arange(1.0, 5.0, dtype=torch.float64).repeat(3), atol=1e-12)
    fractions = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.allclose(result.weights, fractions.repeat(3) / 3, atol=1e-12)
    spacing = float(result.grid[1] - result.grid[0])
    assert math.isclose(float(result.density.sum()) * spacing, 1.0, rel_tol=1e-3)


def test_quadrature_reproduces_moments_of_network_hessian():
    model, loss_fn, batch = build_problem("cnn")
    H = HessianOperator(model, loss_fn, batch)
    matrix = reference_hessian(model, loss_fn, *batch)
    steps = 6
    result = spectral_density(H, num_probes=1, lanczos_steps=steps, seed=11)
    probe = rademacher(H.dim, 1, torch.Generator().manual_seed(11), H)[:, 0]
    probe = probe / probe.norm()
    # Gauss quadrature with m nodes is exact for polynomials of degree 2m - 1.
    for degree in range(2 * steps):
        quadrature = float((result.weights * result.nodes**degree).sum())
        expected = float(probe @ torch.linalg.matrix_power(matrix, degree) @ probe)
        assert math.isclose(quadrature, expected, rel_tol=1e-8, abs_tol=1e-12)
    assert math.isclose(float(result.weights.sum()), 1.0, rel_tol=1e-12)


def test_density_plot_and_serialization(tmp_path):
    model, loss_fn, batch = build_problem("mlp")
    result = spectral_density(HessianOperator(model, loss_fn, batch), num_probes=2, lanczos_steps=15, grid=300)
    spacing = float(result.grid[1] - result.grid[0])
    assert math.isclose(float(result.density.sum()) * spacing, 1.0, rel_tol=1e-2)
    assert len(result.to_dict()["grid"]) == 300
    path = plot_spectral_density(result, tmp_path / "plots" / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="sigma must be > 0"):
        spectral_density(torch.eye(5), sigma=-1.0)


def test_mean_over_data_weights_batches_by_size():
    batches = [(torch.ones(3, 1), torch.zeros(3)), (torch.ones(1, 1), torch.zeros(1))]
    values = iter([torch.tensor(2.0), torch.tensor(6.0)])
    where = {"device": torch.device("cpu"), "dtype": torch.float64}
    (mean,), count = mean_over_data(lambda x, y: [next(values)], batches, **where)
    assert count == 4 and float(mean) == (3 * 2.0 + 1 * 6.0) / 4
    with pytest.raises(ValueError, match="no examples"):
        mean_over_data(lambda x, y: [x.sum()], [], **where)
    with pytest.raises(TypeError, match=r"batch 0 of data must be an \(inputs, targets\) pair"):
        mean_over_data(lambda x, y: [x.sum()], [torch.ones(2)], **where)


def test_flatten_accepts_non_contiguous_tensors():
    from samhess.curvature import flatten, unflatten

    matrix = torch.arange(6.0).reshape(2, 3)
    flat = flatten([matrix.T, torch.ones(2)])
    assert flat.tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 1.0, 1.0]
    assert [t.shape for t in unflatten(flat, [matrix.T, torch.ones(2)])] == [(3, 2), (2,)]
