"""Gains of real optimizer steps on a trained digits MLP (float64, mini-batch of 128).

Asserted: SAM's gains along the top-5 Hessian eigenvectors match 1 + rho lambda_i / ||g|| within
5% at rho = 0.01; SGD's step is the reference, so its gains and ratio are 1; IRE's gains equal
the exact identity D = (I + kappa M) D_base; the first-order predicted sharp/flat ratio of SAM and
USAM exceeds 1 (it is a weighted mean of the top eigenvalues against a Rayleigh quotient on
their complement). Printed: the sharp/flat ratios of SGD, SAM, USAM, IRE/SGD, IRE/AdamW and
SAM-IRE, and of IRE/AdamW against its own AdamW step (run pytest with -s to see them).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from samhess.analysis import (
    directional_gains,
    ire_mask_quality,
    plot_gains,
    sharp_flat_gains,
)
from samhess.curvature import HessianOperator, eigenpairs, fisher_diagonal
from samhess.optim import IRE, SAM, USAM

RHO = 0.01
USAM_RHO = 0.05
LR = 0.1
K = 5


@pytest.fixture(scope="module")
def top(trained_digits_mlp, digits_batch):
    model, loss_fn = trained_digits_mlp
    return eigenpairs(HessianOperator(model, loss_fn, digits_batch), K, which="largest", seed=0)


def _ire(inner, model, loss_fn, batch):
    ire = IRE(inner, kappa=2.0, gamma=0.5)
    diagonal = fisher_diagonal(model, loss_fn, batch, num_samples=4,
                               generator=torch.Generator().manual_seed(0))
    ire.update_mask(diagonal)
    return ire


def test_sam_gains_match_first_order_prediction(digits_mlp, digits_batch, top, tmp_path):
    model, loss_fn = digits_mlp
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    result = directional_gains(model, loss_fn, digits_batch, sam, top)
    eigenvalues = np.array(top.eigenvalues.tolist())
    expected = 1 + RHO * eigenvalues / result.grad_norm
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-12)
    print("\nSAM gains along the top-5 eigenvectors (batch 128, rho 0.01)")
    for lam, gain, prediction in zip(eigenvalues, result.gains, result.predictions):
        print(f"  lambda {lam:8.4f}  measured {gain:.5f}  predicted {prediction:.5f}  "
              f"error {abs(gain - prediction) / prediction:.2%}")
    np.testing.assert_allclose(result.gains, expected, rtol=0.05)
    assert all(g > 1 for g in result.gains)
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["eigenvalues"] == pytest.approx(eigenvalues.tolist())
    path = plot_gains(result, tmp_path / "gains.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sharp_flat_ratios(digits_mlp, digits_batch, top, tmp_path):
    model, loss_fn = digits_mlp
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizers = {
        "SGD": torch.optim.SGD(params, lr=LR),
        "SAM": SAM(params, torch.optim.SGD, rho=RHO, lr=LR),
        "USAM": USAM(params, torch.optim.SGD, rho=USAM_RHO, lr=LR),
        "IRE/SGD": _ire(torch.optim.SGD(params, lr=LR), model, loss_fn, digits_batch),
        "IRE/AdamW": _ire(torch.optim.AdamW(params, lr=1e-3), model, loss_fn, digits_batch),
        "SAM-IRE": _ire(SAM(params, torch.optim.SGD, rho=RHO, lr=LR), model, loss_fn,
                        digits_batch),
    }
    results = {name: sharp_flat_gains(model, loss_fn, digits_batch, optimizer, k=K, sharp=top)
               for name, optimizer in optimizers.items()}
    ire_adamw = optimizers["IRE/AdamW"]
    results["IRE/AdamW vs AdamW"] = sharp_flat_gains(
        model, loss_fn, digits_batch, ire_adamw, k=K, sharp=top, reference=ire_adamw.optimizer)

    print(f"\nsharp/flat gains on digits, batch 128, top-{K} eigenvectors vs their complement "
          f"(rho {RHO}, USAM rho {USAM_RHO}, IRE kappa 2 gamma 0.5)")
    print(f"  {'optimizer':<19} {'sharp':>9} {'flat':>9} {'ratio':>8} {'predicted':>10}")
    for name, r in results.items():
        predicted = "-" if r.predicted_ratio is None else f"{r.predicted_ratio:.4f}"
        print(f"  {name:<19} {r.sharp_gain:>9.4f} {r.flat_gain:>9.4f} {r.ratio:>8.4f} "
              f"{predicted:>10}")
    quality = ire_mask_quality(optimizers["IRE/SGD"], top)
    print(f"  IRE mask (gamma {quality.mask_fraction:.2f}): sharp eigenvectors' mass on flat "
          f"coordinates {np.round(quality.sharp_mass_on_mask, 3).tolist()}")

    sgd = results["SGD"]
    assert sgd.sharp_gain == pytest.approx(1.0, abs=1e-10)
    assert sgd.flat_gain == pytest.approx(1.0, abs=1e-10)
    assert sgd.ratio == pytest.approx(1.0, abs=1e-10)
    for name in ("SAM", "USAM", "SAM-IRE"):
        r = results[name]
        assert r.sharp_gain == pytest.approx(r.predicted_sharp_gain, rel=0.05)
        assert r.flat_gain == pytest.approx(r.predicted_flat_gain, rel=0.05)
    for name in ("SAM", "USAM"):
        assert results[name].predicted_ratio > 1
        assert results[name].ratio > 1
    ire = results["IRE/SGD"]  # D = -lr (I + kappa M) g holds exactly
    assert ire.sharp_gain == pytest.approx(ire.predicted_sharp_gain, rel=1e-8)
    assert ire.flat_gain == pytest.approx(ire.predicted_flat_gain, rel=1e-8)
    assert results["IRE/AdamW"].predicted_ratio is None
    own = results["IRE/AdamW vs AdamW"]  # D = (I + kappa M) D_AdamW holds exactly
    assert own.sharp_gain == pytest.approx(own.predicted_sharp_gain, rel=1e-8)
    assert own.ratio == pytest.approx(own.predicted_ratio, rel=1e-8)
    for b, p in zip(before, params):
        assert torch.equal(b, p.detach())
    path = plot_gains(results["SAM"], tmp_path / "sharp_flat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(results["SAM"].to_dict(), allow_nan=False)


def test_flat_eigenvectors(digits_mlp, digits_batch, top, batch_hessian):
    """The flattest eigenvectors of the batch Hessian, from a dense torch.func Hessian.

    Its exact null space (|lambda| ~ 1e-20) holds no gradient at all, so the gain there is
    reported as NaN rather than as a ratio of rounding errors. On the 1000 flattest
    eigenvectors, which carry a small but real part of the gradient, SAM's gain is the
    first-order 1 + rho (Pg)^T H (Pg) / (||g|| ||Pg||^2) ~ 1: no acceleration.
    """
    model, loss_fn = digits_mlp
    _, eigenvalues, eigenvectors = batch_hessian
    order = torch.argsort(eigenvalues.abs())
    sam = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)

    null = eigenvectors[:, order[:K]]
    assert eigenvalues[order[:K]].abs().max() < 1e-12 * top.eigenvalues[0]
    result = sharp_flat_gains(model, loss_fn, digits_batch, sam, k=K, sharp=top,
                              flat_directions=null)
    assert result.flat == "given"
    assert result.flat_share < 1e-20
    assert math.isnan(result.flat_gain) and math.isnan(result.ratio)
    json.dumps(result.to_dict(), allow_nan=False)

    flattest = eigenvectors[:, order[:1000]]
    # they hold under the default min_share (1e-4) of ||g||^2: no gain is reported by default
    default = sharp_flat_gains(model, loss_fn, digits_batch, sam, k=K, sharp=top,
                               flat_directions=flattest)
    assert default.flat_share < default.min_share
    assert math.isnan(default.flat_gain) and "flat subspace holds" in default.undefined_reason
    result = sharp_flat_gains(model, loss_fn, digits_batch, sam, k=K, sharp=top,
                              flat_directions=flattest, min_share=1e-6)
    print(f"\nSAM (rho {RHO}) on the 1000 flattest eigenvectors (|lambda| <= "
          f"{float(eigenvalues[order[999]].abs()):.1e}, {result.flat_share:.2e} of ||g||^2): "
          f"measured gain {result.flat_gain:.5f}, predicted {result.predicted_flat_gain:.7f}")
    assert result.flat_share > 1e-6
    assert result.predicted_flat_gain == pytest.approx(1.0, abs=1e-4)
    assert result.flat_gain == pytest.approx(result.predicted_flat_gain, abs=0.01)
    assert result.ratio > 1
