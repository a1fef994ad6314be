"""ire_mask_quality against hand-computed values and the random-mask expectation gamma."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samhess.analysis import flat_mask_vector, ire_mask_quality
from samhess.optim import IRE


def test_hand_computed_example():
    """d = 4, v = (1, 1, 0, 0)/sqrt 2, mask (1, 0, 1, 0): half of v on the mask; the complement
    of v has dimension 3 and Tr(M P_F) = |m| - ||M v||^2 = 1.5."""
    v = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64) / math.sqrt(2)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    quality = ire_mask_quality(mask, v)
    assert quality.dim == 4
    assert quality.mask_fraction == 0.5
    assert quality.sharp_mass_on_mask == pytest.approx([0.5], abs=1e-15)
    assert quality.sharp_separation == pytest.approx(1.0, abs=1e-15)
    assert quality.flat == "complement"
    assert quality.flat_coverage == pytest.approx(0.5, abs=1e-15)
    assert quality.mask_in_flat == pytest.approx(0.75, abs=1e-15)
    # A perfect mask: the sharp vector lives on coordinates 0 and 1, the mask on 2 and 3.
    perfect = ire_mask_quality(torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), v)
    assert perfect.sharp_mass_on_mask == [0.0]
    assert perfect.flat_coverage == pytest.approx(2 / 3, abs=1e-15)
    assert perfect.mask_in_flat == pytest.approx(1.0, abs=1e-15)
    # Given flat eigenvectors: u = e_2 is wholly on the mask, u = e_1 not at all.
    flat = torch.eye(4, dtype=torch.float64)[:, [2, 1]]
    given = ire_mask_quality(mask, v, flat)
    assert given.flat == "given"
    assert given.flat_mass_on_mask == [1.0, 0.0]
    assert given.flat_coverage == pytest.approx(0.5, abs=1e-15)
    assert given.mask_in_flat == pytest.approx(0.5, abs=1e-15)
    json.dumps(given.to_dict(), allow_nan=False)


def test_random_mask_baseline_is_gamma():
    """Random orthonormal vectors in high dimension put a share ~gamma of their mass on a random
    mask of fraction gamma (the baseline the separation is measured against)."""
    generator = torch.Generator().manual_seed(0)
    dim, k, gamma = 20000, 5, 0.3
    vectors = torch.linalg.qr(torch.randn(dim, k, generator=generator, dtype=torch.float64)).Q
    mask = (torch.rand(dim, generator=generator, dtype=torch.float64) < gamma).double()
    quality = ire_mask_quality(mask, vectors)
    fraction = quality.mask_fraction
    assert fraction == pytest.approx(gamma, abs=0.01)
    # Each mass is a mean of dim terms: its standard deviation is about sqrt(2 gamma / dim).
    for mass in quality.sharp_mass_on_mask:
        assert mass == pytest.approx(fraction, abs=5 * math.sqrt(2 * fraction / dim))
    assert quality.sharp_separation == pytest.approx(1.0, abs=0.05)
    assert quality.flat_coverage == pytest.approx(fraction, abs=1e-3)


def test_mask_from_ire_follows_parameter_order():
    a = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    ire = IRE(torch.optim.SGD([a, b], lr=0.1), kappa=1.0, gamma=0.5)
    with pytest.raises(ValueError, match="no mask yet"):
        flat_mask_vector(ire)
    # The four smallest estimates (round(0.5 * 7) = 4 coordinates) are b's three and a[0, 0].
    ire.update_mask([torch.tensor([[0.5, 9.0], [8.0, 7.0]], dtype=torch.float64),
                     torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)])
    assert flat_mask_vector(ire).tolist() == [1, 0, 0, 0, 1, 1, 1]
    assert flat_mask_vector(ire, params=[b, a]).tolist() == [1, 1, 1, 1, 0, 0, 0]
    vectors = torch.eye(7, dtype=torch.float64)[:, [0, 1]]
    quality = ire_mask_quality(ire, vectors)
    assert quality.sharp_mass_on_mask == [1.0, 0.0]
    other = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=r"params\[0\]"):
        flat_mask_vector(ire, params=[other])


def test_bad_arguments():
    v = torch.eye(3, dtype=torch.float64)[:, :1]
    with pytest.raises(ValueError, match="only 0 and 1"):
        ire_mask_quality(torch.tensor([0.5, 1.0, 0.0]), v)
    with pytest.raises(ValueError, match=r"eigenvectors must have shape \(3, k\)"):
        ire_mask_quality(torch.tensor([1.0, 1.0, 0.0]), torch.eye(4)[:, :1])
    with pytest.raises(TypeError, match="ire_or_mask"):
        ire_mask_quality("mask", v)
