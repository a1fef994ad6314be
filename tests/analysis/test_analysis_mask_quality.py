"""ire_mask_quality against hand-computed values, the random-mask expectation gamma, and a dense
Hessian on the digits MLP."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samhess.analysis import flat_mask_vector, ire_mask_quality, smallest_magnitude_eigenpairs
from samhess.curvature import fisher_diagonal
from samhess.optim import IRE


def test_hand_computed_example():
    """d = 4, v = (1, 1, 0, 0)/sqrt 2, mask (1, 0, 1, 0): half of v on the mask; flat vectors
    e_2 (on the mask) and e_1 (off it): mean flat mass 1/2; coordinate 0 alone has zero
    gradient and zero curvature, and it is one of the mask's two coordinates."""
    v = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64) / math.sqrt(2)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    flat = torch.eye(4, dtype=torch.float64)[:, [2, 1]]
    gradient = torch.tensor([0.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    diagonal = torch.tensor([0.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    quality = ire_mask_quality(mask, v, flat, gradient=gradient, curvature_diagonal=diagonal)
    assert quality.dim == 4
    assert quality.mask_fraction == 0.5
    assert quality.sharp_mass_on_mask == pytest.approx([0.5], abs=1e-15)
    assert quality.sharp_separation == pytest.approx(1.0, abs=1e-15)
    assert quality.flat_mass_on_mask == [1.0, 0.0]
    assert quality.mean_flat_mass_on_mask == 0.5
    assert quality.inert_fraction == 0.25
    assert quality.mask_inert_share == 0.5
    json.dumps(quality.to_dict(), allow_nan=False)
    # The ideal is reachable: the mask's coordinates span the flat vectors e_2, e_3 exactly.
    perfect = ire_mask_quality(torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), v,
                               torch.eye(4, dtype=torch.float64)[:, 2:])
    assert perfect.sharp_mass_on_mask == [0.0]
    assert perfect.mean_flat_mass_on_mask == 1.0
    assert perfect.inert_fraction is None and perfect.mask_inert_share is None
    # The same as lists of per-parameter tensors.
    listed = ire_mask_quality([mask[:3], mask[3:]], v, gradient=[gradient[:3], gradient[3:]],
                              curvature_diagonal=[diagonal[:3], diagonal[3:]])
    assert listed.mask_inert_share == 0.5 and listed.flat_mass_on_mask is None


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
    flat = torch.linalg.qr(torch.randn(dim, k, generator=generator, dtype=torch.float64)).Q
    assert ire_mask_quality(mask, vectors, flat).mean_flat_mass_on_mask == pytest.approx(
        fraction, abs=5 * math.sqrt(2 * fraction / (dim * k)))


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
    mask = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="gradient and curvature_diagonal must be given together"):
        ire_mask_quality(mask, v, gradient=torch.zeros(3))
    with pytest.raises(ValueError, match="gradient must hold 3 coordinates, got 4"):
        ire_mask_quality(mask, v, gradient=torch.zeros(4), curvature_diagonal=torch.zeros(3))
    with pytest.raises(TypeError, match="curvature_diagonal must be a flat tensor"):
        ire_mask_quality(mask, v, gradient=torch.zeros(3), curvature_diagonal="zeros")


@pytest.mark.slow
def test_fisher_mask_on_the_digits_mlp(trained_digits_mlp, digits_batch, batch_hessian,
                                       flat_loss_function):
    """A gamma = 0.5 mask from the sampled-label Fisher diagonal, against the dense torch.func
    Hessian: the coordinates with a zero row and a zero gradient (inputs blank in the whole
    batch) have a zero Fisher estimate, so the mask holds every one of them; the eigenvectors
    of smallest nonzero |lambda| have no mass there, so a mask spent on them holds none of the
    flat eigenspace it was meant to amplify."""
    model, loss_fn = trained_digits_mlp
    hessian, eigenvalues, eigenvectors = batch_hessian
    loss = flat_loss_function(model, loss_fn, digits_batch)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_(True)
    gradient = torch.autograd.grad(loss(w), w)[0]
    inert = (hessian == 0).all(dim=1) & (gradient == 0)
    assert 0 < int(inert.sum()) < gradient.numel() // 2

    ire = IRE(torch.optim.SGD(model.parameters(), lr=0.1), kappa=2.0, gamma=0.5)
    ire.update_mask(fisher_diagonal(model, loss_fn, digits_batch, num_samples=4,
                                    generator=torch.Generator().manual_seed(0)))
    mask = flat_mask_vector(ire).bool()
    assert bool(mask[inert].all())

    values, flat = smallest_magnitude_eigenpairs(model, loss_fn, digits_batch, 5, skip_null=True)
    lambda_max = float(eigenvalues.abs().max())
    magnitudes = eigenvalues.abs().sort().values
    null = int((magnitudes < 1e-14 * lambda_max).sum())
    assert float(magnitudes[null]) > 1e-12 * lambda_max  # a gap of 100 at least
    torch.testing.assert_close(values.abs(), magnitudes[null:null + 5], rtol=0,
                               atol=1e-10 * lambda_max)
    assert float(flat[inert].square().sum()) < 1e-12  # eigh rounding; a random vector: 0.1

    sharp = eigenvectors[:, -5:]
    quality = ire_mask_quality(ire, sharp, flat, gradient=gradient,
                               curvature_diagonal=ire.estimate)
    assert quality.inert_fraction == float(inert.double().mean())
    assert quality.mask_inert_share == pytest.approx(float(inert.sum()) / float(mask.sum()),
                                                     rel=1e-15)
    expected = (flat.square() * mask[:, None]).sum(dim=0)
    assert quality.flat_mass_on_mask == pytest.approx(expected.tolist(), rel=1e-12)
