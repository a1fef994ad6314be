"""The Hessian of the mean loss, applied exactly and matrix-free."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from samhess._validation import check_choice
from samhess.curvature.data import mean_over_data
from samhess.curvature.operators import CurvatureOperator, check_finite_loss
from samhess.curvature.vectors import flatten, unflatten

HVP_METHODS = ("double-backward", "forward-over-reverse")


@dataclass
class _GradientGraph:
    point: torch.Tensor  # the flat parameter vector the graph differentiates
    gradient: torch.Tensor  # the flat gradient at ``point``, with its graph
    loss: torch.Tensor


class HessianOperator(CurvatureOperator):
    """The Hessian :math:`H = \\nabla^2_w \\bar L(w)` of the mean loss over ``data``.

    .. math::

        \\bar L(w) = \\frac{\\sum_b W_b L_b(w)}{\\sum_b W_b}, \\qquad
        H v = \\frac{\\sum_b W_b \\nabla^2 L_b(w)\\, v}{\\sum_b W_b},

    with :math:`L_b` the batch-mean loss of batch :math:`b` and :math:`W_b` the units it averages
    over (its examples, or its non-ignored tokens: :mod:`samhess.curvature.units`). Each product
    is exact (Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994):

    * ``method="double-backward"`` (default): :math:`Hv = \\nabla_w \\langle \\nabla_w L(w), v\\rangle`,
      reverse mode over reverse mode. With a single batch the gradient's graph is built once and
      kept (``cache_graph=True``), so each product costs one backward pass through it.
    * ``method="forward-over-reverse"``: :math:`Hv = \\partial_t \\nabla_w L(w + t v)|_{t=0}` with
      :func:`torch.func.jvp` over :func:`torch.func.grad`; columns of a matrix are batched with
      :func:`torch.func.vmap` (the model must support ``vmap``).

    Measured with ``benchmarks/bench_curvature.py`` (CPU, one thread, an MLP of 6,570 and a CNN
    of 3,834 parameters, batch of 512, several runs), one product cost 1.1-2.1 gradients by
    double backward on the kept graph, 1.7-3.2 rebuilding it, and 1.9-4.4 by
    forward-over-reverse, always in that order; hence the default. ``benchmarks/bench_scaling.py``
    (MLPs, ResNet-20/56 and transformers of 1e4 to 1e7 parameters, two runs) measured 1.2-2.9
    gradients on the kept graph, the same as PyHessian's own product within the noise at every
    size, 2.6-4.6 rebuilding it and 3.2-6.0 forward-over-reverse. ``torch.compile`` of
    forward-over-reverse matched the kept graph on the MLP (about 1.0 ms per product either way)
    after a 38 s compilation on CPU, so it is not offered.

    ``params`` selects the parameters: a subset gives the corresponding diagonal block of the
    full Hessian (per-layer curvature). The model runs in eval mode by default (BatchNorm uses
    its running statistics, dropout is off) and is left in the mode it came in; floating data is
    cast to the parameters' dtype, so ``model.double()`` gives a float64 Hessian.

    Models with scaled-dot-product attention run it on the math kernel during products
    (:mod:`samhess.curvature.attention`): the fused kernels have no second derivative.

    Args:
        model: the network, called as ``model(inputs)``, ``model(*inputs)`` for a tuple or list
            and ``model(**inputs)`` for a mapping (:mod:`samhess.curvature.batches`); its
            outputs (a tensor, a mapping, any object) go to ``loss_fn`` as they are.
        loss_fn: ``loss_fn(outputs, targets)``, the batch-mean loss.
        data: one ``(inputs, targets)`` batch or a re-iterable collection of batches (e.g. a
            ``DataLoader``; it should not shuffle if its products must be repeatable).
        params: parameters of ``model``; default every parameter requiring a gradient.
        eval_mode: evaluate the model in eval mode.
        method: ``"double-backward"`` or ``"forward-over-reverse"``.
        cache_graph: with single-batch data and ``method="double-backward"``, keep the gradient
            graph between products (memory of one training step for speed).
        weight_of: ``weight_of(targets)`` -> the number of units the batch's mean loss averages
            over, for a loss whose mean is neither over the examples (``targets.shape[0]``) nor
            one samhess knows (:class:`~samhess.curvature.TokenCrossEntropy`,
            ``nn.CrossEntropyLoss``); used only when ``data`` holds several batches.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2).double()
        >>> batch = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> H = HessianOperator(model, nn.CrossEntropyLoss(), batch)
        >>> (H @ torch.ones(H.dim)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        data: Any,
        params: Iterable[torch.Tensor] | None = None,
        *,
        eval_mode: bool = True,
        method: str = "double-backward",
        cache_graph: bool = True,
        weight_of: Callable[[Any], Any] | None = None,
    ) -> None:
        self.method = check_choice("method", method, HVP_METHODS)
        # forward-over-reverse builds no graph that could be kept
        cache_graph = cache_graph and self.method == "double-backward"
        super().__init__(
            model, loss_fn, data, params, eval_mode=eval_mode, cache_graph=cache_graph, weight_of=weight_of
        )

    def _batch_product(
        self, inputs: Any, targets: Any, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method == "forward-over-reverse":
            return self._forward_over_reverse(inputs, targets, rows)
        return super()._batch_product(inputs, targets, rows)

    def _prepare(self, inputs: Any, targets: Any) -> _GradientGraph:
        # The model runs on views of one flat copy of the parameters, so the gradient and every
        # product are flat vectors that autograd assembles itself: no per-tensor split or
        # concatenation in Python on each product.
        point = flatten(self.params).requires_grad_(True)
        loss = self.loss_fn(self._outputs(unflatten(point, self.params), inputs), targets)
        (gradient,) = torch.autograd.grad(
            loss, point, create_graph=True, allow_unused=True, materialize_grads=True
        )
        return _GradientGraph(point, gradient, loss.detach())

    def _products_on(self, state: _GradientGraph, rows: torch.Tensor) -> torch.Tensor:
        if not state.gradient.requires_grad:  # the loss is at most linear in the parameters
            return torch.zeros_like(rows)
        products = [
            torch.autograd.grad(state.gradient, state.point, row, retain_graph=True)[0] for row in rows
        ]
        return products[0].unsqueeze(0) if len(products) == 1 else torch.stack(products)

    def _forward_over_reverse(
        self, inputs: Any, targets: Any, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        primals = tuple(p.detach() for p in self.params)

        def loss_at(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return self.loss_fn(self._outputs(values, inputs), targets)

        gradient_and_loss = torch.func.grad_and_value(loss_at)

        def product(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            tangents = tuple(unflatten(row, primals))
            _, hv, loss = torch.func.jvp(gradient_and_loss, (primals,), (tangents,), has_aux=True)
            return torch.cat([h.reshape(-1) for h in hv]), loss

        if rows.shape[0] == 1:
            hv, loss = product(rows[0])
            return hv.unsqueeze(0).detach(), loss.detach()
        products, losses = torch.func.vmap(product, chunk_size=32)(rows)
        return products.detach(), losses[0].detach()

    def gradient(self) -> torch.Tensor:
        """The flat gradient :math:`\\nabla_w \\bar L(w)` of the mean loss over ``data``."""
        def batch_gradient(inputs: Any, targets: Any):
            leaves = self._leaves()
            loss = self.loss_fn(self._outputs(leaves, inputs), targets)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
            return flatten(grads), loss.detach()

        (grad, loss), _ = mean_over_data(
            batch_gradient, self.data, device=self.device, dtype=self.dtype, weight=self._weight
        )
        check_finite_loss(loss, "gradient")
        return grad
