"""The edges of stability drawn on the lambda_max curves, against their defining equations."""

from __future__ import annotations

import pytest

from samhess.experiments.optimizer_kinds import OPTIMIZER_KINDS, optimizer_kind
from samhess.experiments.stability import StabilityEdge, stability_threshold


@pytest.mark.parametrize("lr", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("ratio", [1e-3, 0.05, 2.0, 50.0])
def test_sam_and_usam_edges_solve_their_equations(lr, ratio):
    # SAM: lr lambda (1 + rho lambda / ||g||) = 2 at the edge, with rho / ||g|| = ratio
    edge = stability_threshold(StabilityEdge.SAM, lr, rho=ratio * 0.5, grad_norm=0.5)
    assert lr * edge * (1.0 + ratio * edge) == pytest.approx(2.0, rel=1e-12)
    assert 0 < edge < 2.0 / lr  # SAM's edge lies below gradient descent's
    usam = stability_threshold(StabilityEdge.USAM, lr, rho=ratio)
    assert usam == pytest.approx(edge, rel=1e-12)


def test_gradient_descent_edge_with_momentum_and_weight_decay():
    assert stability_threshold(StabilityEdge.GRADIENT_DESCENT, 0.1) == pytest.approx(20.0)
    # heavy ball: 2 (1 + beta) / lr; L2 weight decay adds mu to every curvature
    assert stability_threshold(StabilityEdge.GRADIENT_DESCENT, 0.1, momentum=0.9,
                               weight_decay=0.5) == pytest.approx(38.0 - 0.5)
    # SAM's edge tends to 2/lr as rho / ||g|| goes to 0
    assert stability_threshold(StabilityEdge.SAM, 0.1, rho=1e-12, grad_norm=1.0) == \
        pytest.approx(20.0, rel=1e-9)


def test_no_edge_is_stated_where_none_is_known():
    assert stability_threshold(StabilityEdge.SAM, 0.1, rho=0.05, grad_norm=0.0) is None
    assert stability_threshold(StabilityEdge.SAM, 0.1, rho=0.05, grad_norm=1.0,
                               momentum=0.9) is None
    assert stability_threshold(StabilityEdge.USAM, 0.1, rho=0.05, weight_decay=1e-4) is None
    for name in ("adamw", "admire", "asam"):
        assert optimizer_kind(name).stability_edge is None
    # an IRE kind has its base's edge
    for kind in OPTIMIZER_KINDS.values():
        if kind.base is not None:
            assert kind.stability_edge is optimizer_kind(kind.base).stability_edge
    with pytest.raises(ValueError, match="lr must be > 0"):
        stability_threshold(StabilityEdge.GRADIENT_DESCENT, 0.0)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        stability_threshold(StabilityEdge.GRADIENT_DESCENT, 0.1, momentum=-0.1)
