r"""Where the seed note's picture of SAM holds: gain error against radius, batch and alignment.

The first-order picture predicts SAM's gain along an eigenvector :math:`v_i` of the batch
Hessian :math:`H_B` to be :math:`1 + x_i` with

.. math::

    x_i = \rho \lambda_i / \lVert g_B\rVert \quad (\text{SAM}), \qquad
    x_i = \rho \lambda_i \quad (\text{USAM}).

The neglected term of the gradient at :math:`w + e` is :math:`\tfrac12 \nabla^3 L[e, e]`; along
:math:`v_i` it adds :math:`\tfrac12\rho^2\langle v_i, \nabla^3 L[\hat g, \hat g]\rangle /
\langle v_i, g_B\rangle` to SAM's gain (:mod:`samhess.analysis.second_order`), which relative to
the predicted correction :math:`x_i` is

.. math::

    \frac{\rho\, \langle v_i, \nabla^3 L[\hat g, \hat g]\rangle}
          {2 \lambda_i \langle v_i, \hat g\rangle}:

it grows with :math:`\rho` and with :math:`1/|\langle v_i, \hat g\rangle|`, and does not depend
on :math:`\lVert g_B\rVert`. A small full-batch gradient makes :math:`x` large without breaking
the picture; a gradient nearly orthogonal to the sharp eigenvectors breaks it at any :math:`x`,
with gains of either sign. The alignment is set by training: after full-batch gradient descent
the top-5 eigenspace of the digits MLP holds about :math:`10^{-9}` of :math:`\lVert g\rVert^2` and
the full-batch gains fail at :math:`\rho = 0.05`, after full-batch Adam about :math:`10^{-3}`,
after mini-batch SGD more than half (``python benchmarks/seed_validity.py``,
``docs/theory.md``). :func:`validity_map` measures the errors on a grid of batch sizes and
radii with real SAM steps (over SGD), with each eigenvector's alignment (``reference_share``) and
each batch's share of :math:`\lVert g_B\rVert^2` in the top-:math:`k` eigenspace
(``sharp_share``); :func:`format_validity_table` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from samhess._validation import check_choice, check_int_at_least, check_positive
from samhess.analysis._steps import as_data, evaluation_mode, resolve_parameters
from samhess.analysis.gains import complement_gain, subspace_gain, subspace_share
from samhess.analysis.results import ValidityMap, ValidityPoint, ValiditySummary
from samhess.analysis.step_model import measure_steps
from samhess.curvature import HessianOperator, eigenpairs
from samhess.curvature.batches import count_examples, select_examples
from samhess.optim import SAM

__all__ = ["validity_map", "format_validity_table"]


def _error(measured: float, predicted: float, scale: float) -> float:
    return abs(measured - predicted) / abs(scale) if scale != 0 else math.nan


def _check_radii(rhos: Sequence[float]) -> list[float]:
    radii = [check_positive(f"rhos[{i}]", r) for i, r in enumerate(rhos)]
    if not radii:
        raise ValueError("rhos must hold at least one radius, got none")
    return radii


def _check_batch_sizes(batch_sizes: Sequence[int | None], num_examples: int) -> list[int]:
    sizes = []
    for i, size in enumerate(batch_sizes):
        if size is None:
            sizes.append(num_examples)
        else:
            sizes.append(min(check_int_at_least(f"batch_sizes[{i}]", size, 1), num_examples))
    if not sizes:
        raise ValueError("batch_sizes must hold at least one size, got none")
    return sizes


def validity_map(
    model: nn.Module,
    loss_fn: Callable,
    data: tuple[Any, Any],
    rhos: Sequence[float],
    batch_sizes: Sequence[int | None],
    *,
    k: int = 5,
    mode: str = "sam",
    lr: float = 0.1,
    seed: int = 0,
    params: Sequence[torch.Tensor] | None = None,
    eval_mode: bool = True,
) -> ValidityMap:
    r"""The error of the first-order gain prediction over a grid of batch sizes and radii.

    For each batch size :math:`b` (``None`` or :math:`b \ge N` is the full data set) the batch
    is the first :math:`b` examples of a permutation drawn with ``seed``; its top-``k`` Hessian
    eigenpairs come from :func:`samhess.curvature.eigenpairs`. For each radius one real SAM step
    over plain SGD (learning rate ``lr``; gains do not depend on it) is taken from the model's
    weights and undone, and its gain along each eigenvector is compared with
    :math:`1 + x_i`:

    * ``gain_error`` :math:`= |\text{measured} - (1 + x_i)| / |1 + x_i|`;
    * ``correction_error`` :math:`= |\text{measured} - (1 + x_i)| / |x_i|`, the error relative
      to the predicted acceleration;
    * per batch size and radius, the sharp (top-:math:`k` span) and flat (its complement)
      subspace gains and their ratio, measured and predicted.

    Args:
        model: the network at the weights to analyse.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean batch loss.
        data: the full data set ``(inputs, targets)``, one batch of any kind
            (:mod:`samhess.curvature.batches`) whose tensors all hold its examples along
            dimension 0 (smaller batches are taken by indexing them).
        rhos: SAM radii.
        batch_sizes: batch sizes; ``None`` for the full batch.
        k: sharp eigenvectors per batch (>= 1).
        mode: ``"sam"`` or ``"usam"``.
        lr: learning rate of the SGD base (> 0).
        seed: seeds the batch permutation and the Lanczos start vectors.
        params: the parameters (default: the model's trainable parameters).
        eval_mode: measure in eval mode.

    Returns:
        A :class:`~samhess.analysis.results.ValidityMap`.
    """
    num_examples = count_examples(data, "data")
    radii = _check_radii(rhos)
    sizes = _check_batch_sizes(batch_sizes, num_examples)
    k = check_int_at_least("k", k, 1)
    mode = check_choice("mode", mode, ("sam", "usam"))
    lr = check_positive("lr", lr)
    params = resolve_parameters(model, params)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_examples, generator=generator)

    result = ValidityMap(mode=mode, k=k, num_examples=num_examples, rhos=radii, batch_sizes=sizes)
    for size in sizes:
        batch = data if size >= num_examples else select_examples(data, order[:size], "data")
        with evaluation_mode(model, eval_mode):
            operator = HessianOperator(model, loss_fn, as_data(batch), params=params, eval_mode=eval_mode)
            top = eigenpairs(operator, k, which="largest", seed=seed)
        vectors = top.eigenvectors.to(dtype=params[0].dtype)
        eigenvalues = top.eigenvalues.to(dtype=params[0].dtype)
        for rho in radii:
            sam = SAM(params, torch.optim.SGD, rho=rho, normalize=(mode == "sam"), lr=lr)
            measurement = measure_steps(
                model, loss_fn, batch, sam, params=params, eval_mode=eval_mode
            )
            g = measurement.gradient
            grad_norm = float(g.norm())
            # SAM and USAM over plain SGD: D = -lr (g + c H g), c = rho/||g|| or rho.
            coefficient = measurement.prediction.coefficient
            measured = (vectors.T @ measurement.step) / (vectors.T @ measurement.reference_step)
            shares = (vectors.T @ g).abs() / grad_norm
            points = []
            for index in range(vectors.shape[1]):
                x = coefficient * float(eigenvalues[index])
                gain = float(measured[index])
                points.append(
                    ValidityPoint(
                        batch_size=size,
                        rho=rho,
                        index=index,
                        eigenvalue=float(eigenvalues[index]),
                        x=x,
                        measured_gain=gain,
                        predicted_gain=1.0 + x,
                        gain_error=_error(gain, 1.0 + x, 1.0 + x),
                        correction_error=_error(gain, 1.0 + x, x),
                        reference_share=float(shares[index]),
                    )
                )
            result.points.extend(points)
            sharp = subspace_gain(vectors, measurement.step, measurement.reference_step)
            flat = complement_gain(vectors, measurement.step, measurement.reference_step)
            predicted_sharp = subspace_gain(
                vectors, measurement.predicted_step, measurement.reference_step
            )
            predicted_flat = complement_gain(
                vectors, measurement.predicted_step, measurement.reference_step
            )
            errors = torch.tensor([p.gain_error for p in points], dtype=torch.float64)
            result.summaries.append(
                ValiditySummary(
                    batch_size=size,
                    rho=rho,
                    grad_norm=grad_norm,
                    lambda_max=float(eigenvalues[0]),
                    x_max=coefficient * float(eigenvalues[0]),
                    median_gain_error=float(torch.quantile(errors, 0.5)),
                    max_gain_error=float(errors.max()),
                    subspace_gain_error=_error(sharp, predicted_sharp, predicted_sharp),
                    min_measured_gain=min(p.measured_gain for p in points),
                    sharp_gain=sharp,
                    flat_gain=flat,
                    ratio=sharp / flat if flat != 0 else math.nan,
                    predicted_sharp_gain=predicted_sharp,
                    predicted_flat_gain=predicted_flat,
                    sharp_share=subspace_share(vectors, g),
                )
            )
    return result


def format_validity_table(result: ValidityMap) -> str:
    r"""The map's summaries as a fixed-width text table, one row per batch size and radius.

    Columns: batch size, radius, :math:`\lVert g_B\rVert`, :math:`\lambda_\max`,
    :math:`x_\max`, median and largest per-eigenvector ``gain_error``, the sharp subspace
    gain's error, the smallest measured gain, the sharp and flat subspace gains, their ratio,
    its first-order prediction, and the share of :math:`\lVert g_B\rVert^2` in the top-k
    eigenspace (in scientific notation: it spans ten orders of magnitude).
    """
    header = (
        f"{'batch':>6} {'rho':>7} {'||g||':>8} {'lam_max':>8} {'x_max':>7} "
        f"{'med err':>8} {'max err':>8} {'sub err':>8} {'min gain':>9} "
        f"{'sharp':>8} {'flat':>7} {'ratio':>7} {'pred':>7} {'g share':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in result.summaries:
        predicted_ratio = (
            s.predicted_sharp_gain / s.predicted_flat_gain if s.predicted_flat_gain else math.nan
        )
        size = "full" if s.batch_size >= result.num_examples else str(s.batch_size)
        lines.append(
            f"{size:>6} {s.rho:>7.3g} {s.grad_norm:>8.4f} {s.lambda_max:>8.3f} {s.x_max:>7.3f} "
            f"{s.median_gain_error:>8.2%} {s.max_gain_error:>8.2%} {s.subspace_gain_error:>8.2%} "
            f"{s.min_measured_gain:>9.3f} {s.sharp_gain:>8.3f} {s.flat_gain:>7.3f} "
            f"{s.ratio:>7.3f} {predicted_ratio:>7.3f} {s.sharp_share:>8.1e}"
        )
    return "\n".join(lines)
