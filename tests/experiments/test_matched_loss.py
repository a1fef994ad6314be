"""Flatness at matched train loss, read off hand-built records."""

from __future__ import annotations

import math

import pytest

from samhess.experiments.matched_loss import crossing, matched_loss


def _record(step, loss, lambda_max, trace=None):
    return {"step": step, "train_loss": loss, "lambda_max": lambda_max,
            "hessian_trace": 10 * lambda_max if trace is None else trace}


def test_the_crossing_is_interpolated_in_log_loss():
    records = [_record(0, 2.0, 1.0), _record(100, 0.4, 8.0), _record(200, 0.1, 6.0),
               _record(300, 0.025, 4.0)]
    # 0.05 lies halfway between 0.1 and 0.025 in log loss: t = log(0.1/0.05) / log(0.1/0.025)
    # = 1/2, so step 250, lambda_max 5, trace 50.
    found = crossing(records, 0.05)
    assert found.step == pytest.approx(250.0)
    assert found.values == pytest.approx({"lambda_max": 5.0, "hessian_trace": 50.0})
    # a quarter of the way in log loss between 0.4 and 0.1
    t = math.log(0.4 / (0.4 * 0.25 ** 0.25)) / math.log(0.4 / 0.1)
    assert t == pytest.approx(0.25)
    found = crossing(records, 0.4 * 0.25 ** 0.25)
    assert found.step == pytest.approx(125.0)
    assert found.values["lambda_max"] == pytest.approx(8.0 - 0.25 * 2.0)


def test_the_first_crossing_counts_and_exact_hits_need_no_interpolation():
    # The loss dips to 0.2 at step 100, rises to 0.5, and falls to 0.1 at step 300.
    records = [_record(0, 1.0, 1.0), _record(100, 0.2, 3.0), _record(200, 0.5, 9.0),
               _record(300, 0.1, 7.0)]
    # 0.3 is first reached between steps 0 and 100, not in the second descent
    t = math.log(1.0 / 0.3) / math.log(1.0 / 0.2)
    first = crossing(records, 0.3)
    assert first.step == pytest.approx(100 * t)
    assert first.values["lambda_max"] == pytest.approx(1.0 + 2.0 * t)
    # 0.1 is reached exactly at step 300 (the record before it, step 200, lies above)
    exact = crossing(records, 0.1)
    assert exact.step == pytest.approx(300.0)
    assert exact.values == pytest.approx({"lambda_max": 7.0, "hessian_trace": 70.0})
    # a run that starts at or below the loss is read at its first record
    assert crossing(records, 5.0).step == 0.0


def test_runs_that_never_reach_the_loss_and_records_without_values():
    records = [_record(0, 1.0, 1.0), _record(100, 0.5, 2.0)]
    assert crossing(records, 0.1) is None
    # records missing a value (or with a non-positive loss) are left out, not read as zero
    gappy = [_record(0, 1.0, 1.0), {"step": 50, "train_loss": 0.3, "lambda_max": None,
                                    "hessian_trace": 1.0}, _record(100, 0.1, 3.0)]
    found = crossing(gappy, 0.1 ** 0.5)  # halfway in log loss between steps 0 and 100
    assert found.step == pytest.approx(50.0)
    assert found.values["lambda_max"] == pytest.approx(2.0)


def test_the_matched_loss_is_the_lowest_loss_every_run_reached():
    fast = [_record(0, 2.0, 1.0), _record(100, 0.01, 1.0)]
    slow = [_record(0, 2.0, 1.0), _record(100, 0.2, 1.0), _record(200, 0.05, 1.0),
            _record(300, 0.08, 1.0)]
    assert matched_loss([fast, slow]) == pytest.approx(0.05)
    assert crossing(slow, matched_loss([fast, slow])).step == pytest.approx(200.0)
    assert matched_loss([fast, []]) is None
