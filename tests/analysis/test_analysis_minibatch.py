"""minibatch_decomposition against an independent torch.func computation (forward-over-reverse
Hessian-vector products, dense eigenvectors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg
import torch

from samhess.analysis import minibatch_decomposition

RHO = 0.05
K = 3


def test_decomposition_equals_independent_computation(
    trained_digits_mlp, digits, digits_batch, batch_hessian, flat_loss_function
):
    model, loss_fn = trained_digits_mlp
    inputs, labels = digits
    chunks = [(inputs[i:i + 600], labels[i:i + 600]) for i in range(0, inputs.shape[0], 600)]
    result = minibatch_decomposition(model, loss_fn, digits_batch, chunks, RHO, k=K)

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    batch_loss = flat_loss_function(model, loss_fn, digits_batch)
    full_loss = flat_loss_function(model, loss_fn, digits)

    def hvp(loss, v):
        return torch.func.jvp(torch.func.grad(loss), (w,), (v,))[1]

    g_b = torch.func.grad(batch_loss)(w)
    g_d = torch.func.grad(full_loss)(w)
    c = RHO / g_b.norm()
    hb_gb, hb_gd, hd_gd = hvp(batch_loss, g_b), hvp(batch_loss, g_d), hvp(full_loss, g_d)
    assert result.grad_norm_batch == pytest.approx(float(g_b.norm()), rel=1e-10)
    assert result.grad_norm_full == pytest.approx(float(g_d.norm()), rel=1e-10)
    assert result.noise_norm == pytest.approx(float((g_b - g_d).norm()), rel=1e-8)
    assert result.extra_term_norm == pytest.approx(float(c * hb_gb.norm()), rel=1e-8)
    assert result.signal_term_norm == pytest.approx(float(c * hb_gd.norm()), rel=1e-8)
    assert result.noise_term_norm == pytest.approx(float(c * (hb_gb - hb_gd).norm()), rel=1e-8)
    assert result.full_term_norm == pytest.approx(float(c * hd_gd.norm()), rel=1e-8)
    assert result.hessian_noise_term_norm == pytest.approx(float(c * (hb_gd - hd_gd).norm()),
                                                           rel=1e-8)
    assert result.noise_share == pytest.approx(result.noise_term_norm / result.extra_term_norm)
    assert result.batch_size == 128 and result.k == K

    # Top-k eigenvectors: H_B from the dense Hessian, H_D by ARPACK on torch.func products.
    _, eigenvalues, eigenvectors = batch_hessian
    v_b = eigenvectors[:, -K:].flip(1).numpy()
    operator = scipy.sparse.linalg.LinearOperator(
        (w.numel(), w.numel()), dtype=np.float64,
        matvec=lambda v: hvp(full_loss, torch.from_numpy(np.ascontiguousarray(v).ravel())).numpy())
    values_d, v_d = scipy.sparse.linalg.eigsh(operator, k=K, which="LA", tol=1e-12,
                                              v0=np.ones(w.numel()))
    np.testing.assert_allclose(result.eigenvalues_batch, eigenvalues[-K:].flip(0).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(result.eigenvalues_full, np.sort(values_d)[::-1], rtol=1e-6)
    overlap = float(np.square(v_b.T @ v_d).sum()) / K
    assert result.subspace_overlap == pytest.approx(overlap, abs=1e-6)
    angles = np.sort(np.degrees(scipy.linalg.subspace_angles(v_b, v_d)))
    np.testing.assert_allclose(result.principal_angles_deg, angles, atol=1e-3)

    print(f"\nmini-batch 128 of digits, rho {RHO}: ||g_B|| {result.grad_norm_batch:.4f}, "
          f"||g_D|| {result.grad_norm_full:.4f}, ||noise|| {result.noise_norm:.4f}; "
          f"extra term: noise share {result.noise_share:.2f}, signal share "
          f"{result.signal_share:.2f}, Hessian-noise part {result.hessian_noise_term_norm:.4f} "
          f"vs full-data part {result.full_term_norm:.4f}; top-{K} overlap "
          f"{result.subspace_overlap:.3f}")
    json.dumps(result.to_dict(), allow_nan=False)


def test_bad_arguments(quadratic):
    model, loss_fn, batch, _, _, _ = quadratic
    with pytest.raises(ValueError, match="rho must be > 0"):
        minibatch_decomposition(model, loss_fn, batch, batch, 0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        minibatch_decomposition(model, loss_fn, batch, batch, 0.1, mode="asam")
    with pytest.raises(TypeError, match="one-shot"):
        minibatch_decomposition(model, loss_fn, batch, iter([batch]), 0.1, k=2)
