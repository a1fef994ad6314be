"""The sampled-label Fisher: an operator and the Gauss-Newton-Bartlett diagonal.

The Fisher of the model's predictive distribution :math:`p(y \\mid f(x; w))` over the data is

.. math::

    F = \\frac1M \\sum_{m=1}^M \\mathbb E_{\\hat y \\sim p(\\cdot \\mid f_m)}
        \\left[ \\nabla_w \\ell(f_m, \\hat y) \\nabla_w \\ell(f_m, \\hat y)^\\top \\right]
      = \\frac1M \\sum_m J_m^\\top \\nabla^2_{f} \\ell(f_m) J_m ,

where :math:`\\ell = -\\log p` and :math:`m` runs over the :math:`M` independent predictions
(examples, or tokens of a sequence model) that the loss counts: positions whose target is a
cross-entropy's ``ignore_index`` (padding) are left out, as the loss leaves them out
(:func:`samhess.curvature.units.counted_rows`). The predictions are the logits, found in the
model's outputs by :func:`samhess.curvature.logits.find_logits`. For cross-entropy and the squared error it equals the
generalized Gauss-Newton matrix (:class:`~samhess.curvature.ggn.GGNOperator`) of the plain mean
loss (Martens, "New insights and perspectives on the natural gradient method", JMLR 2020).
Replacing the expectation by draws of :math:`\\hat y` ("sampled labels", Monte-Carlo Fisher)
gives unbiased estimates that need one backward pass per draw.

The likelihood is that of the loss kind (:mod:`samhess.curvature.losses`): options of ``loss_fn``
such as class weights or label smoothing do not enter the Fisher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samhess._validation import check_int_at_least
from samhess.curvature.data import mean_over_data
from samhess.curvature.jacobian import OutputJacobian
from samhess.curvature.logits import check_logits_of, find_logits
from samhess.curvature.losses import (
    as_rows,
    detect_loss_kind,
    negative_log_likelihood,
    output_gradients,
    sample_targets,
)
from samhess.curvature.operators import CurvatureOperator, check_finite_loss, gradient_products
from samhess.curvature.units import counted_rows
from samhess.curvature.vectors import flatten, unflatten


@dataclass
class _SampledFisherState:
    jacobian: OutputJacobian
    residuals: torch.Tensor  # (num_samples, M, d): output gradients at the sampled targets
    count: int  # predictions the loss counts (rows of ignored targets have zero residuals)
    loss: torch.Tensor


class FisherOperator(CurvatureOperator):
    """The sampled-label (Monte-Carlo) Fisher :math:`\\hat F`, a fixed draw of the Fisher.

    .. math::

        \\hat F = \\frac{1}{S M} \\sum_{s=1}^S \\sum_{m=1}^M J_m^\\top r_{m,s} r_{m,s}^\\top J_m,
        \\qquad r_{m,s} = \\nabla_f \\ell(f_m, \\hat y_{m,s}), \\;
        \\hat y_{m,s} \\sim p(\\cdot \\mid f_m),

    averaged over batches like every operator. :math:`\\mathbb E[\\hat F] = F = G`. Products cost
    one :math:`J v` and one :math:`J^\\top u` per batch, like the GGN. The labels are drawn from a
    generator seeded with ``seed`` at the start of every product, so :math:`\\hat F` is the same
    matrix for every product as long as the batches come in the same order.

    Args:
        model, loss_fn, data, params, eval_mode, cache_graph, weight_of: as for
            :class:`~samhess.curvature.hessian.HessianOperator`.
        logits_of: ``logits_of(outputs)`` -> the logits, for outputs in which
            :func:`~samhess.curvature.logits.find_logits` does not find them.
        loss_kind: ``"cross_entropy"`` or ``"mse"``; detected from ``loss_fn`` when ``None``.
        num_samples: draws :math:`S` of the labels per prediction.
        seed: seed of the label draws.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        params: Iterable[torch.Tensor] | None = None,
        *,
        eval_mode: bool = True,
        loss_kind: str | None = None,
        num_samples: int = 1,
        seed: int = 0,
        cache_graph: bool = True,
        weight_of: Callable[[Any], Any] | None = None,
        logits_of: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.loss_kind = detect_loss_kind(loss_fn, loss_kind)
        self.num_samples = check_int_at_least("num_samples", num_samples, 1)
        self.seed = check_int_at_least("seed", seed, 0)
        self.logits_of = check_logits_of(logits_of)
        super().__init__(
            model, loss_fn, data, params, eval_mode=eval_mode, cache_graph=cache_graph, weight_of=weight_of
        )
        self._generator = torch.Generator(device=self.device)

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        self._generator.manual_seed(self.seed)
        return super()._product(rows)

    def _counted(self, logits: torch.Tensor, targets: Any) -> tuple[torch.Tensor | None, int]:
        """The mask of the prediction rows the loss counts (``None``: all) and their number."""
        num_rows = as_rows(logits, self.loss_kind).shape[0]
        if self.loss_kind != "cross_entropy":
            return None, num_rows
        counted = counted_rows(self.loss_fn, targets, num_rows)
        return counted, num_rows if counted is None else int(counted.sum())

    def _prepare(self, inputs: Any, targets: Any) -> _SampledFisherState:
        leaves = self._leaves()
        outputs = self._outputs(leaves, inputs)
        logits = find_logits(outputs, self.logits_of)
        detached = logits.detach()
        residuals = torch.stack(
            [
                output_gradients(detached, sample_targets(detached, self.loss_kind, self._generator), self.loss_kind)
                for _ in range(self.num_samples)
            ]
        )
        counted, count = self._counted(detached, targets)
        if counted is not None:
            residuals = residuals * counted[:, None].to(residuals.dtype)
        with torch.no_grad():
            loss = self.loss_fn(outputs, targets)
        return _SampledFisherState(OutputJacobian(logits, leaves), residuals, count, loss)

    def _apply(self, state: _SampledFisherState, vector: list[torch.Tensor]) -> list[torch.Tensor]:
        jv = as_rows(state.jacobian.jvp(vector), self.loss_kind)
        coefficients = (state.residuals * jv).sum(dim=-1, keepdim=True)
        scale = 1.0 / (state.residuals.shape[0] * max(state.count, 1))
        covector = (state.residuals * coefficients).sum(dim=0) * scale
        return state.jacobian.vjp(covector.reshape(state.jacobian.outputs.shape))

    def gauss_newton_bartlett_diagonal(
        self, num_samples: int | None = None, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Gauss-Newton-Bartlett estimate of :math:`\\operatorname{diag}(F)` (see :func:`fisher_diagonal`)."""
        num_samples = self.num_samples if num_samples is None else check_int_at_least(
            "num_samples", num_samples, 1
        )

        def batch_estimate(inputs: Any, targets: Any):
            leaves = self._leaves()
            outputs = self._outputs(leaves, inputs)
            logits = find_logits(outputs, self.logits_of)
            counted, count = self._counted(logits.detach(), targets)
            total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
            for _ in range(num_samples):
                sampled = sample_targets(logits, self.loss_kind, generator)
                surrogate = negative_log_likelihood(logits, sampled, self.loss_kind, counted)
                gradient = flatten(gradient_products([surrogate], leaves, [torch.ones_like(surrogate)]))
                total.add_(gradient.square(), alpha=count)
            with torch.no_grad():
                loss = self.loss_fn(outputs, targets)
            return total / num_samples, loss

        (estimate, loss), _ = mean_over_data(
            batch_estimate, self.data, device=self.device, dtype=self.dtype, weight=self._weight
        )
        check_finite_loss(loss, "Fisher")
        return [t.clone() for t in unflatten(estimate, self.params)]


def fisher_diagonal(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Any,
    params: Iterable[torch.Tensor] | None = None,
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    loss_kind: str | None = None,
    eval_mode: bool = True,
    weight_of: Callable[[Any], Any] | None = None,
    logits_of: Callable[[Any], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Gauss-Newton-Bartlett estimate of the Fisher (= GGN) diagonal, shaped like ``params``.

    For each batch with :math:`M` predictions (those the loss counts), labels are drawn from the model,
    :math:`\\hat y_m \\sim p(\\cdot \\mid f_m)`, and

    .. math::

        \\hat h = M \\, \\nabla_w \\hat L \\odot \\nabla_w \\hat L, \\qquad
        \\hat L = \\frac1M \\sum_{m=1}^M \\ell(f_m, \\hat y_m),

    averaged over ``num_samples`` draws and over batches (weighted by the loss's units, as every
    operator). Because
    :math:`\\mathbb E_{\\hat y}[\\nabla_w \\ell(f_m, \\hat y)] = 0`, the cross terms vanish in
    expectation and :math:`\\mathbb E[\\hat h] = \\operatorname{diag}(F) = \\operatorname{diag}(G)`.
    One backward pass per draw, the cost of a gradient. (Liu et al., "Sophia: a scalable
    stochastic second-order optimizer for language model pre-training", 2023, Algorithm 2;
    Martens, JMLR 2020.) For the squared error the predictive distribution is the Gaussian
    :math:`\\mathcal N(f, \\tfrac12)`, whose negative log-likelihood is :math:`(f - y)^2` up to a
    constant, and :math:`M` counts output entries.

    Args:
        model: the network.
        loss_fn: the batch-mean loss; used to detect the loss kind and to check the loss is finite.
        data: one ``(inputs, targets)`` batch or a re-iterable collection of batches.
        params: parameters of ``model``; default every parameter requiring a gradient.
        num_samples: label draws per batch.
        generator: random generator for the draws (on the parameters' device); the global one
            when ``None``.
        loss_kind: ``"cross_entropy"`` or ``"mse"``; detected from ``loss_fn`` when ``None``.
        eval_mode: evaluate the model in eval mode (it is left in the mode it came in).
        weight_of: as for :class:`~samhess.curvature.hessian.HessianOperator`.
        logits_of: as for :class:`FisherOperator`.

    Returns:
        Non-negative tensors, one per parameter, shaped like the parameters.
    """
    operator = FisherOperator(
        model, loss_fn, data, params, eval_mode=eval_mode, loss_kind=loss_kind,
        num_samples=num_samples, weight_of=weight_of, logits_of=logits_of,
    )
    return operator.gauss_newton_bartlett_diagonal(generator=generator)
