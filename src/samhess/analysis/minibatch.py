r"""The seed note's mini-batch reading of SAM's step: batch Hessian times noisy gradient.

On a mini-batch :math:`B` of the data :math:`D`, SAM's step is, to first order,
:math:`-\eta (I + c H_B)\, g_B` with :math:`c = \rho/\lVert g_B\rVert` (USAM: :math:`c = \rho`),
and :math:`g_B = g_D + \xi` with :math:`\xi` the gradient noise of the batch. The extra term
splits as

.. math::

    c H_B g_B = \underbrace{c H_D g_D}_{\text{full-data SAM}}
              + \underbrace{c (H_B - H_D) g_D}_{\text{Hessian noise}}
              + \underbrace{c H_B \xi}_{\text{gradient noise}},

and :func:`minibatch_decomposition` reports the size of each part and how well the top
eigenvectors of :math:`H_B` match those of :math:`H_D`. The mini-batch is what separates
SAM's implicit bias: full-batch SAM drives down :math:`\lambda_\max(H)`, batch-size-one SAM
:math:`\operatorname{Tr} H` (Wen, Ma & Li, ICLR 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import nn

from samhess._validation import check_choice, check_int_at_least, check_positive
from samhess.analysis._steps import (
    as_data,
    evaluation_mode,
    preserved_training_state,
    resolve_parameters,
)
from samhess.analysis.results import MinibatchDecomposition
from samhess.curvature import HessianOperator, eigenpairs
from samhess.curvature.batches import count_examples

__all__ = ["minibatch_decomposition"]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def minibatch_decomposition(
    model: nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    full_data: Any,
    rho: float,
    k: int = 5,
    mode: str = "sam",
    *,
    params: Sequence[torch.Tensor] | None = None,
    seed: int = 0,
    eval_mode: bool = True,
    weight_of: Callable[[Any], Any] | None = None,
) -> MinibatchDecomposition:
    r"""SAM's extra term :math:`c H_B g_B` split into full-data, Hessian- and gradient-noise parts.

    Computes :math:`g_B`, :math:`g_D`, :math:`\xi = g_B - g_D`, the products
    :math:`H_B g_B`, :math:`H_B g_D`, :math:`H_D g_D` (four Hessian-vector products through
    :class:`samhess.curvature.HessianOperator`) and the top-``k`` eigenvectors of :math:`H_B`
    and :math:`H_D` (:func:`samhess.curvature.eigenpairs`). ``noise_share`` is
    :math:`\lVert c H_B\xi\rVert / \lVert c H_B g_B\rVert`; the two shares need not add to 1,
    since the parts are vectors (``signal_noise_cosine`` says how they combine). The subspace
    overlap is :math:`\lVert V_B^\top V_D\rVert_F^2/k` and the principal angles come from
    :func:`scipy.linalg.subspace_angles`.

    Args:
        model: the network at weights :math:`w`.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean batch loss.
        batch: the mini-batch :math:`B`, ``(inputs, targets)``.
        full_data: the data :math:`D`: one ``(inputs, targets)`` batch or a re-iterable
            collection of them (a ``DataLoader``), averaged as the curvature operators average.
        rho: SAM's radius (> 0).
        k: eigenvectors compared (>= 1).
        mode: ``"sam"`` (:math:`c = \rho/\lVert g_B\rVert`) or ``"usam"`` (:math:`c = \rho`).
        params: the parameters (default: the model's trainable parameters).
        seed: seeds the Lanczos start vectors.
        eval_mode: measure in eval mode.
        weight_of: the units each batch of ``full_data`` averages over, for a loss samhess does
            not know (:mod:`samhess.curvature.units`).

    Returns:
        A :class:`~samhess.analysis.results.MinibatchDecomposition`.
    """
    batch_size = count_examples(batch)
    rho = check_positive("rho", rho)
    k = check_int_at_least("k", k, 1)
    mode = check_choice("mode", mode, ("sam", "usam"))
    params = resolve_parameters(model, params)
    with preserved_training_state(model, []), evaluation_mode(model, eval_mode):
        h_batch = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
        g_batch = h_batch.gradient()
        h_full = HessianOperator(
            model, loss_fn, full_data, params=params, eval_mode=eval_mode, weight_of=weight_of
        )
        g_full = h_full.gradient()
        noise = g_batch - g_full
        products = h_batch @ torch.stack([g_batch, g_full], dim=1)
        hb_gb, hb_gd = products[:, 0], products[:, 1]
        hb_noise = hb_gb - hb_gd
        hd_gd = h_full @ g_full
        top_batch = eigenpairs(h_batch, k, which="largest", seed=seed)
        top_full = eigenpairs(h_full, k, which="largest", seed=seed)

    grad_norm_batch = float(g_batch.norm())
    if mode == "sam" and grad_norm_batch == 0.0:
        raise ValueError("the mini-batch gradient is zero, so SAM's g/||g|| is undefined")
    coefficient = rho / grad_norm_batch if mode == "sam" else rho
    extra = coefficient * float(hb_gb.norm())
    signal = coefficient * float(hb_gd.norm())
    noise_term = coefficient * float(hb_noise.norm())
    cosine = _ratio(float(hb_gd @ hb_noise), float(hb_gd.norm()) * float(hb_noise.norm()))
    v_batch = top_batch.eigenvectors.detach().cpu().double().numpy()
    v_full = top_full.eigenvectors.detach().cpu().double().numpy()
    overlap = float(np.square(v_batch.T @ v_full).sum()) / k
    angles = np.sort(np.degrees(scipy.linalg.subspace_angles(v_batch, v_full)))
    return MinibatchDecomposition(
        rho=rho,
        mode=mode,
        batch_size=batch_size,
        grad_norm_batch=grad_norm_batch,
        grad_norm_full=float(g_full.norm()),
        noise_norm=float(noise.norm()),
        extra_term_norm=extra,
        signal_term_norm=signal,
        noise_term_norm=noise_term,
        noise_share=_ratio(noise_term, extra),
        signal_share=_ratio(signal, extra),
        signal_noise_cosine=cosine,
        full_term_norm=coefficient * float(hd_gd.norm()),
        hessian_noise_term_norm=coefficient * float((hb_gd - hd_gd).norm()),
        extra_to_gradient=_ratio(extra, grad_norm_batch),
        k=k,
        eigenvalues_batch=top_batch.eigenvalues.tolist(),
        eigenvalues_full=top_full.eigenvalues.tolist(),
        subspace_overlap=overlap,
        principal_angles_deg=angles.tolist(),
    )
