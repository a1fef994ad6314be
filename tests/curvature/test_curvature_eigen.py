"""Eigenpairs against dense float64 eigendecompositions."""

from __future__ import annotations

import pytest
import torch

from samhess.curvature import HessianOperator, eigenpairs

from curvature_reference import MODEL_NAMES, build_problem, reference_hessian


def _residuals(matrix, result):
    """||H u_i - lambda_i u_i|| for every returned pair."""
    vectors = result.eigenvectors
    return torch.linalg.vector_norm(matrix @ vectors - vectors * result.eigenvalues, dim=0)


def _check_pairs(result, matrix, expected, which, k):
    assert result.eigenvalues.shape == (k,)
    assert result.eigenvectors.shape == (matrix.shape[0], k)
    assert torch.allclose(result.eigenvalues, expected, rtol=1e-8, atol=0)
    assert (_residuals(matrix, result) / result.eigenvalues.abs()).max() < 1e-6
    gram = result.eigenvectors.T @ result.eigenvectors
    assert torch.allclose(gram, torch.eye(k, dtype=gram.dtype), atol=1e-8)
    assert result.which == which and result.converged


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_extreme_eigenpairs_of_network_hessians(name, method):
    model, loss_fn, batch = build_problem(name)
    matrix = reference_hessian(model, loss_fn, *batch)
    spectrum = torch.linalg.eigvalsh(matrix)
    H = HessianOperator(model, loss_fn, batch)
    expected = {
        "largest": spectrum.flip(0)[:5],
        "smallest": spectrum[:5],
        "magnitude": spectrum[spectrum.abs().argsort(descending=True)][:5],
    }
    for which, values in expected.items():
        before = H.num_matvecs
        result = eigenpairs(H, 5, which, method=method)
        _check_pairs(result, matrix, values, which, 5)
        assert H.num_matvecs - before == result.num_matvecs


def _diagonal_matrix(values):
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(len(values), len(values), generator=generator, dtype=torch.float64)).Q
    return basis @ torch.diag(torch.as_tensor(values, dtype=torch.float64)) @ basis.T


def test_restarts_and_top_one():
    values = torch.cat([torch.tensor([10.0, 9.0, 8.5, 8.0, 7.9]), torch.linspace(-3.0, 5.0, 295)]).double()
    matrix = _diagonal_matrix(values)
    # A basis of 8 vectors forces many thick restarts for 5 pairs.
    result = eigenpairs(matrix, 5, num_lanczos_vectors=8)
    _check_pairs(result, matrix, values[:5], "largest", 5)
    assert result.num_matvecs > 8
    top = eigenpairs(matrix, 1, seed=3)
    _check_pairs(top, matrix, values[:1], "largest", 1)
    assert torch.allclose(top.residual_norms, _residuals(matrix, top), atol=1e-10)


def test_low_rank_operator_breakdown():
    values = torch.zeros(40, dtype=torch.float64)
    values[:3] = torch.tensor([5.0, 4.0, 3.0])
    matrix = _diagonal_matrix(values)
    result = eigenpairs(matrix, 5)
    assert torch.allclose(result.eigenvalues, values[:5], atol=1e-12)
    assert _residuals(matrix, result).max() < 1e-12
    assert result.converged


def test_float32_default_tolerance():
    values = torch.linspace(-1.0, 4.0, 200)
    matrix = _diagonal_matrix(values).float()
    result = eigenpairs(matrix, 3)
    assert result.eigenvalues.dtype == torch.float32
    assert torch.allclose(result.eigenvalues.double(), values.flip(0)[:3].double(), rtol=1e-5)


def test_not_converged_warns():
    matrix = _diagonal_matrix(torch.linspace(0.0, 1.0, 100))
    with pytest.warns(RuntimeWarning, match="not converged"):
        result = eigenpairs(matrix, 2, tol=1e-12, max_matvecs=5)
    assert not result.converged
    assert result.num_matvecs == 5
    assert result.to_dict()["converged"] is False


def test_bad_input():
    matrix = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="k must be smaller than the dimension 6, got k=6"):
        eigenpairs(matrix, 6)
    with pytest.raises(ValueError, match="k must be >= 1"):
        eigenpairs(matrix, 0)
    with pytest.raises(ValueError, match="which must be one of"):
        eigenpairs(matrix, 1, "middle")
    with pytest.raises(ValueError, match="tol must be > 0"):
        eigenpairs(matrix, 1, tol=0.0)
    with pytest.raises(TypeError, match=r"curvature operator \(e.g. HessianOperator\) or a square tensor"):
        eigenpairs([[1.0]], 1)
