"""validity_map against the other code path (directional_gains with a SAM optimizer)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samhess.analysis import directional_gains, format_validity_table, plot_validity, validity_map
from samhess.curvature import HessianOperator, eigenpairs
from samhess.optim import SAM

RHOS = [0.01, 0.05]
K = 3


@pytest.fixture(scope="module")
def vmap(trained_digits_mlp, digits):
    model, loss_fn = trained_digits_mlp
    return validity_map(model, loss_fn, digits, RHOS, [128, None], k=K, seed=0)


def test_map_matches_directional_gains(vmap, digits_mlp, digits):
    model, loss_fn = digits_mlp
    inputs, labels = digits
    assert vmap.batch_sizes == [128, inputs.shape[0]]
    assert len(vmap.points) == 2 * len(RHOS) * K and len(vmap.summaries) == 2 * len(RHOS)
    chosen = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(0))[:128]
    batch = (inputs[chosen], labels[chosen])
    top = eigenpairs(HessianOperator(model, loss_fn, batch), K, which="largest", seed=0)
    for rho in RHOS:
        sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
        gains = directional_gains(model, loss_fn, batch, sam, top)
        points = [p for p in vmap.points if p.batch_size == 128 and p.rho == rho]
        assert [p.measured_gain for p in points] == pytest.approx(gains.gains, rel=1e-10)
        assert [p.predicted_gain for p in points] == pytest.approx(gains.predictions, rel=1e-10)
        for p in points:
            assert p.x == pytest.approx(rho * p.eigenvalue / gains.grad_norm, rel=1e-12)
            assert p.gain_error == pytest.approx(
                abs(p.measured_gain - p.predicted_gain) / abs(p.predicted_gain), rel=1e-12)
            assert p.correction_error == pytest.approx(
                abs(p.measured_gain - p.predicted_gain) / abs(p.x), rel=1e-12)


def test_summaries_and_output(vmap, tmp_path):
    for s in vmap.summaries:
        points = [p for p in vmap.points if p.batch_size == s.batch_size and p.rho == s.rho]
        assert s.max_gain_error == max(p.gain_error for p in points)
        assert s.min_measured_gain == min(p.measured_gain for p in points)
        assert s.x_max == pytest.approx(points[0].x, rel=1e-12)
        assert s.ratio == pytest.approx(s.sharp_gain / s.flat_gain, rel=1e-12)
        assert math.isfinite(s.subspace_gain_error)
    # The full-batch gradient is smaller, so the same radius gives a larger x.
    by_key = {(s.batch_size, s.rho): s for s in vmap.summaries}
    full = vmap.num_examples
    assert by_key[(full, 0.01)].grad_norm < by_key[(128, 0.01)].grad_norm
    table = format_validity_table(vmap)
    print("\n" + table)
    assert len(table.splitlines()) == 2 + len(vmap.summaries)
    assert "full" in table
    payload = json.loads(json.dumps(vmap.to_dict(), allow_nan=False))
    assert len(payload["points"]) == len(vmap.points)
    for against in ("x", "rho"):
        path = plot_validity(vmap, tmp_path / f"validity_{against}.png", against=against)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="against must be one of"):
        plot_validity(vmap, tmp_path / "bad.png", against="lambda")


def test_bad_arguments(trained_digits_mlp, digits):
    model, loss_fn = trained_digits_mlp
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] must be >= 1"):
        validity_map(model, loss_fn, digits, RHOS, [0])
    with pytest.raises(ValueError, match=r"rhos\[0\] must be > 0"):
        validity_map(model, loss_fn, digits, [0.0], [128])
    with pytest.raises(ValueError, match="lr must be > 0"):
        validity_map(model, loss_fn, digits, RHOS, [128], lr=0.0)
