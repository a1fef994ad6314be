"""The experiments' verdicts, on hand-built numbers whose verdicts are known."""

from __future__ import annotations

import math

import pytest

from samhess.experiments.trajectories import bouncing, edge_of_stability, ire_manifold, m_sharpness
from samhess.experiments.trajectories import sharpness_regularizers as regularizers


def _verdicts(claims) -> list[bool | None]:
    return [claim.holds for claim in claims]


def _drops(sam, one_sam, usam=(0.0, 0.0), gd=(0.0, 0.0), sgd=(0.0, 0.0)):
    values = {"sam": sam, "one-sam": one_sam, "usam": usam, "gd": gd, "sgd": sgd}
    return {name: regularizers.SharpnessDrop(*pair) for name, pair in values.items()}


def test_relative_drop_is_the_fraction_lost():
    assert regularizers.relative_drop(5.0, 4.0) == pytest.approx(0.2)
    assert regularizers.relative_drop(5.0, 6.0) == pytest.approx(-0.2)


def test_the_paper_s_picture_holds_on_numbers_that_show_it():
    claims = regularizers.regularizer_claims(_drops(sam=(0.27, 0.05), one_sam=(0.14, 0.18),
                                                    usam=(0.01, 0.0), gd=(0.001, -0.002),
                                                    sgd=(-0.0015, 0.001)))
    assert _verdicts(claims) == [True, True, True, True, True]
    assert "5.40 for full-batch SAM against 0.78 for 1-SAM" in claims[2].evidence
    assert "rose by 0.2%" in claims[4].evidence


def test_each_part_fails_on_its_own():
    # 1-SAM lowers both more (a faster flow, not another direction): parts 1 and 3 fail
    claims = regularizers.regularizer_claims(_drops(sam=(0.20, 0.10), one_sam=(0.30, 0.10)))
    assert _verdicts(claims)[:3] == [False, False, False]
    # USAM lowering lambda_max as much as SAM, and a control moving by 2%
    claims = regularizers.regularizer_claims(_drops(sam=(0.3, 0.05), one_sam=(0.1, 0.2),
                                                    usam=(0.3, 0.0), sgd=(0.0, -0.02)))
    assert _verdicts(claims) == [True, True, True, False, False]
    assert _verdicts(regularizers.regularizer_claims(
        _drops(sam=(0.3, 0.05), one_sam=(0.1, 0.2), gd=(0.009, 0.0)))) == [True] * 5


def test_the_speed_free_ratio_is_undecided_when_tr_h_rose():
    claims = regularizers.regularizer_claims(_drops(sam=(0.3, -0.01), one_sam=(0.1, 0.2)))
    assert claims[2].holds is None and "undefined" in claims[2].evidence


def test_flip_rate_counts_sign_changes_between_neighbours():
    assert bouncing.flip_rate([1.0, -2.0, 3.0, -1.0]) == 1.0
    assert bouncing.flip_rate([1.0, 2.0, -3.0, -1.0, 4.0]) == pytest.approx(0.5)
    assert bouncing.flip_rate([1.0, 0.0, -1.0]) is None  # only pairs with a zero
    assert bouncing.flip_rate([2.0]) is None


def test_the_two_cycle_of_a_quadratic_has_the_predicted_gradient_norm():
    """SAM on L = lambda x^2 / 2 from the cycle's point x* = eta rho lambda / (2 - eta lambda)
    maps x* to -x*, and its gradient lambda x* is the predicted norm."""
    lr, rho, top = 0.02, 0.1, 3.0
    x = lr * rho * top / (2 - lr * top)
    step = x - lr * top * (x + rho * math.copysign(1.0, x))
    assert step == pytest.approx(-x, rel=1e-12)
    assert bouncing.cycle_gradient_norm(lr, rho, top) == pytest.approx(top * x, rel=1e-12)
    assert bouncing.cycle_gradient_norm(1.0, rho, 2.5) is None  # beyond GD's edge


def test_bouncing_verdicts_at_and_around_their_thresholds():
    assert _verdicts(bouncing.bouncing_claims(0.997, 0.8, 0.95)) == [True, True, True]
    assert _verdicts(bouncing.bouncing_claims(0.89, 0.5, 0.85)) == [False, False, False]
    assert _verdicts(bouncing.bouncing_claims(0.9, 1 / math.sqrt(2), 1.09)) == [True] * 3
    assert _verdicts(bouncing.bouncing_claims(None, None, None)) == [None] * 3
    claims = bouncing.bouncing_claims(0.995, 0.5, 0.95)
    assert "25.0% of ||g||^2" in claims[2].evidence


def test_the_edge_quantities():
    assert edge_of_stability.gd_stability(0.5, 4.0) == pytest.approx(1.0)
    # eta lambda (1 + rho lambda / ||g||) / 2 = 0.5 * 2 * (1 + 0.05 * 2 / 0.1) / 2 = 1
    assert edge_of_stability.sam_stability(0.5, 0.05, 2.0, 0.1) == pytest.approx(1.0)


def test_edge_verdicts_per_learning_rate():
    Edge = edge_of_stability.EdgeMeasurement
    claims = edge_of_stability.edge_claims([Edge(0.5, 1.02, 1.09, 4.08, 1.2),
                                            Edge(1.0, 0.85, 1.2, 1.7, 0.9),
                                            Edge(2.0, None, None, None, None)])
    assert _verdicts(claims) == [True, True, False, False, None, None]
    assert "2/eta = 4" in claims[0].claim and "median lambda_max 4.080" in claims[0].evidence


def _trace_records(values, every=100):
    return [{"step": every * i, "hessian_trace": v} for i, v in enumerate(values)]


def test_first_reach_interpolates_between_records():
    records = _trace_records([10.0, 8.0, 6.0, 7.0, 4.0])
    assert ire_manifold.first_reach(records, "hessian_trace", 7.0) == pytest.approx(150.0)
    assert ire_manifold.first_reach(records, "hessian_trace", 10.0) == 0.0
    assert ire_manifold.first_reach(records, "hessian_trace", 5.0) == pytest.approx(300 + 200 / 3)
    assert ire_manifold.first_reach(records, "hessian_trace", 3.0) is None


def test_a_trajectory_twice_as_fast_has_speedup_two_at_every_level():
    base = _trace_records([10.0 - 0.5 * i for i in range(11)])      # 10 -> 5 in 1000 steps
    variant = _trace_records([10.0 - 1.0 * i for i in range(11)])   # 10 -> 0 in 1000 steps
    crossings = ire_manifold.trace_speedups(base, variant)
    assert [c.level for c in crossings] == pytest.approx([8.75, 7.5, 6.25, 5.0])
    assert [c.speedup for c in crossings] == pytest.approx([2.0] * 4)
    assert ire_manifold.median_speedup(crossings) == pytest.approx(2.0)
    slower = ire_manifold.trace_speedups(base, _trace_records([10.0, 9.9, 9.8]))
    assert [c.variant_step for c in slower] == [None] * 4
    assert ire_manifold.median_speedup(slower) is None


def test_ire_verdicts_against_one_plus_kappa():
    assert _verdicts(ire_manifold.ire_claims(1.9, 1.0)) == [True, True]
    assert _verdicts(ire_manifold.ire_claims(1.3, 1.0)) == [True, False]
    assert _verdicts(ire_manifold.ire_claims(0.9, 1.0)) == [False, False]
    assert _verdicts(ire_manifold.ire_claims(2.5, 2.0)) == [True, True]
    assert _verdicts(ire_manifold.ire_claims(None, 1.0)) == [None, None]


def test_m_sharpness_verdicts():
    Row = m_sharpness.AtMatchedLoss
    claims = m_sharpness.m_sharpness_claims([Row(128, 1.8, 46.0), Row(1, 1.9, 39.0),
                                             Row(8, 2.9, 48.0), Row(32, 2.3, 49.0)])
    assert _verdicts(claims) == [True, False]
    assert "At m = 1, 8, 32, 128 Tr H is 39, 48, 49, 46" in claims[0].evidence
    assert "does not rise monotonically" in claims[0].evidence
    claims = m_sharpness.m_sharpness_claims([Row(1, 1.0, 10.0), Row(4, 2.0, 20.0)])
    assert _verdicts(claims) == [True, True] and "it rises monotonically" in claims[1].evidence
