"""Trace estimators: unbiasedness, error at a fixed budget, exactness on low-rank matrices."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samhess.curvature import HessianOperator, MatrixOperator, trace
from samhess.curvature.trace import TRACE_METHODS

from curvature_reference import MODEL_NAMES, build_problem, reference_hessian


def _network_hessian(name: str) -> torch.Tensor:
    model, loss_fn, batch = build_problem(name)
    return reference_hessian(model, loss_fn, *batch)


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_unbiased_on_network_hessian(method):
    matrix = _network_hessian("mlp")
    truth = float(torch.trace(matrix))
    estimates = torch.tensor(
        [trace(matrix, 30, method, seed=seed).estimate for seed in range(300)], dtype=torch.float64
    )
    assert abs(float(estimates.mean()) - truth) < 3 * float(estimates.std()) / math.sqrt(300)


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_reported_standard_error_is_calibrated(method):
    """Over 300 seeds the z-scores (estimate - trace) / stderr spread like a standard normal's,
    and the reported errors' root mean square matches the estimates' spread, within 10%.

    For XTrace this needs the pair correction: the leave-one-out spread alone gives z-scores
    spread 1.36 and a root mean square error 0.78 of the estimates' spread here."""
    matrix = _network_hessian("cnn")
    truth = float(torch.trace(matrix))
    results = [trace(matrix, 60, method, seed=seed) for seed in range(300)]
    estimates = torch.tensor([r.estimate for r in results], dtype=torch.float64)
    errors = torch.tensor([r.stderr for r in results], dtype=torch.float64)
    z_scores = (estimates - truth) / errors
    assert 0.9 < float(z_scores.std()) < 1.1
    reported = float(errors.square().mean().sqrt())
    assert 0.9 < reported / float(estimates.std()) < 1.1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hutch_plus_plus_beats_hutchinson_at_99_matvecs(name):
    matrix = _network_hessian(name)
    truth = float(torch.trace(matrix))

    def mean_error(method):
        return sum(abs(trace(matrix, 99, method, seed=seed).estimate - truth) for seed in range(30)) / 30

    assert mean_error("hutch++") < mean_error("hutchinson")


def test_operator_and_dense_matrix_agree():
    model, loss_fn, batch = build_problem("cnn")
    H = HessianOperator(model, loss_fn, batch)
    matrix = reference_hessian(model, loss_fn, *batch)
    for method in TRACE_METHODS:
        before = H.num_matvecs
        on_operator = trace(H, 25, method, seed=4)
        on_matrix = trace(matrix, 25, method, seed=4)
        assert on_operator.num_matvecs == H.num_matvecs - before == (24 if method == "xtrace" else 25)
        assert math.isclose(on_operator.estimate, on_matrix.estimate, rel_tol=1e-10)


def test_exact_on_low_rank_matrices():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(60, 5, generator=generator, dtype=torch.float64)
    matrix = factor @ torch.diag(torch.tensor([9.0, 5.0, -3.0, 2.0, 1.0], dtype=torch.float64)) @ factor.T
    truth = float(torch.trace(matrix))
    # Hutch++ sketches 10 > rank columns; XTrace has 10 probes, so R is rank-deficient.
    assert math.isclose(trace(matrix, 30, "hutch++").estimate, truth, rel_tol=1e-10)
    assert math.isclose(trace(matrix, 20, "xtrace").estimate, truth, rel_tol=1e-10)
    assert not math.isclose(trace(matrix, 30, "hutchinson").estimate, truth, rel_tol=1e-3)


def test_small_budgets_and_serialization():
    matrix = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    # Rademacher probes are exact on a diagonal matrix; below their minimum budgets (3 and 2)
    # Hutch++ and XTrace fall back to Hutchinson.
    for method, budget in [("hutchinson", 3), ("hutch++", 1), ("hutch++", 2), ("xtrace", 1)]:
        result = trace(matrix, budget, method)
        assert (result.method, result.num_matvecs) == ("hutchinson", budget)
        assert math.isclose(result.estimate, 55.0, rel_tol=1e-12)
    single = trace(matrix, 1, "hutchinson")
    assert single.num_matvecs == 1 and math.isnan(single.stderr)
    assert json.loads(json.dumps(single.to_dict()))["stderr"] is None
    operator = MatrixOperator(matrix)
    assert trace(operator, 7, "hutch++").num_matvecs == operator.num_matvecs == 7


def test_bad_input():
    matrix = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="num_matvecs must be >= 1, got 0"):
        trace(matrix, 0)
    with pytest.raises(TypeError, match="num_matvecs must be an integer"):
        trace(matrix, 2.5)
    with pytest.raises(ValueError, match="method must be one of"):
        trace(matrix, 4, "girard")
