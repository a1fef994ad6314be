r"""m-SAM: one perturbation per micro-batch, within one device.

Foret et al. (2021) observed that SAM generalizes better when each of the :math:`m` shards of a
batch is perturbed by its own gradient ("m-sharpness"); in their data-parallel runs the shards
were the accelerators' batches. Andriushchenko & Flammarion (2022) study the same algorithm on
one device. With micro-batch losses :math:`L_i`, :math:`i = 0, \dots, m-1`:

.. math::

    g_i = \nabla L_i(w), \quad e_i = \rho\,\frac{g_i}{\lVert g_i\rVert}, \quad
    w \leftarrow \mathrm{base}\Bigl(w,\; \frac{1}{m}\sum_{i=0}^{m-1} \nabla L_i(w + e_i)\Bigr).

Not to be confused with Momentum-SAM (Becker et al., 2024), which some libraries also call
MSAM.

References:
    P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-Aware Minimization for Efficiently
    Improving Generalization. ICLR 2021 (Section 4.1, m-sharpness).

    M. Andriushchenko, N. Flammarion. Towards Understanding Sharpness-Aware Minimization.
    ICML 2022.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_int_at_least
from samhess.optim._hyperparameter import Hyperparameter
from samhess.optim.sam import SAM, gradients_of

__all__ = ["MSAM"]


def _check_micro_batches(name: str, value: object) -> int:
    return check_int_at_least(name, value, 1)


def _takes_an_index(closure: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(closure)
    except (TypeError, ValueError):  # builtins without a signature: call them with the index
        return True
    try:
        signature.bind(0)
    except TypeError:
        return False
    return True


class MSAM(SAM):
    r"""SAM with a separate perturbation for each of ``m`` micro-batches (m-sharpness).

    Closure: ``step(closure)`` calls ``closure(i)`` for ``i = 0, ..., m-1``, twice each (at
    :math:`w` and at :math:`w + e_i`); like SAM's closure, ``closure(i)`` zeroes the gradients,
    runs micro-batch ``i``'s forward and backward and returns its loss. ``step`` returns the
    mean of the ``m`` losses at :math:`w`. A closure that takes no argument stands for the
    whole batch, which MSAM cannot split: with ``m=1`` that is SAM's step, and with
    ``m > 1`` ``step`` raises ``TypeError``.

    Two-step, in a hand-written loop: the SAM recipe once per micro-batch; the ``m``-th
    ``second_step`` takes the base step with the mean gradient, the ones before it only
    collect::

        for xb, yb in zip(x.chunk(m), y.chunk(m)):
            loss_fn(model(xb), yb).backward()
            optimizer.first_step(zero_grad=True)         # w -> w + e_i
            with disable_running_stats(model):
                loss_fn(model(xb), yb).backward()
            optimizer.second_step(zero_grad=True)        # back to w; base step after the m-th

    After a collecting ``second_step`` the gradients are cleared (also with
    ``zero_grad=False``: they are in MSAM's running sum, and the next micro-batch's first pass
    must start from zero) and :attr:`skipped_last_step` reads ``True``, so :class:`IRE`
    counts and amplifies only the base step. With a GradScaler, pass it to every
    ``first_step``/``second_step`` and call ``update()`` once, after the ``m``-th. The mean is
    unweighted; for micro-batches of unequal size scale micro-batch ``i``'s loss by
    :math:`m\, n_i / n` to get the size-weighted mean. Checkpoint between steps, not between
    micro-batches (the running sum is not saved).

    Cost: :math:`2m` forward-backward passes of micro-batches, i.e. twice the gradient
    accumulation of the same micro-batches, plus one parameter-sized buffer for the sum.

    First order:
        With an SGD base, :math:`\Delta w = -\mathrm{lr}\,\frac{1}{m}\sum_i \bigl(g_i +
        \rho\, H_i g_i/\lVert g_i\rVert\bigr)`, with each micro-batch's gradient :math:`g_i`
        and Hessian :math:`H_i` at :math:`w`.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        m: number of micro-batches (>= 1; 1 is SAM).
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbations.
        normalize: ``False`` takes USAM's perturbation :math:`e_i = \rho g_i`.
        **base_kwargs: keyword arguments of ``base_optimizer``.
    """

    _hyperparameters = ("m",)
    m = Hyperparameter(_check_micro_batches)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        m: int = 4,
        adaptive: bool = False,
        normalize: bool = True,
        **base_kwargs: Any,
    ) -> None:
        self.m = m
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive,
                         normalize=normalize, **base_kwargs)
        self._sums: dict[torch.Tensor, torch.Tensor] = {}
        self._summed: set[torch.Tensor] = set()
        self._micro_batches_done = 0

    @property
    def micro_batches_done(self) -> int:
        """Micro-batches collected towards the current step (0 between steps)."""
        return self._micro_batches_done

    @torch.no_grad()
    def _completes_step(self) -> bool:
        self._micro_batches_done += 1
        params = [p for group in self.param_groups for p in group["params"]
                  if p.grad is not None]
        if self._micro_batches_done < self.m:
            old = [p for p in params if p in self._summed]
            new = [p for p in params if p not in self._summed]
            if old:
                torch._foreach_add_([self._sums[p] for p in old], gradients_of(old))
            if new:
                torch._foreach_copy_(self._buffers_for(self._sums, new), gradients_of(new))
                self._summed.update(new)
            for p in params:
                p.grad = None
            return False
        summed = [p for p in params if p in self._summed]
        if summed:
            torch._foreach_add_(gradients_of(summed), [self._sums[p] for p in summed])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None and p in self._summed:
                    p.grad = self._sums[p].clone()
        if self.m > 1:
            grads = [p.grad for group in self.param_groups for p in group["params"]
                     if p.grad is not None]
            torch._foreach_div_(grads, self.m)
        self._summed = set()
        self._micro_batches_done = 0
        return True

    @property
    def micro_batches(self) -> int:
        """The number of micro-batches :math:`m`: an optimizer whose ``step(closure)`` calls
        ``closure(i)`` says so here, and the callers (the training loop, the analysis) split the
        batch into this many equal contiguous parts
        (:func:`samhess.curvature.batches.micro_batch`)."""
        return int(self.m)

    def step(self, closure: Callable[..., torch.Tensor] | None = None) -> torch.Tensor | None:
        """One m-SAM step over ``m`` micro-batches (see the class docstring).

        Args:
            closure: ``closure(i)`` zeroes the gradients, runs micro-batch ``i``'s forward and
                backward and returns its loss. Without a closure, ``step()`` completes a
                pending ``first_step`` (as ``second_step`` does).

        Returns:
            The mean of the micro-batch losses at :math:`w`, or ``None`` without a closure.

        Raises:
            TypeError: for a closure without argument (the whole batch) when ``m > 1``.
            RuntimeError: if micro-batches of a two-step loop are pending.
        """
        if closure is None:
            return super().step()
        if not _takes_an_index(closure):
            if self.m == 1:
                return super().step(closure)
            raise TypeError(
                f"MSAM with m={self.m} calls closure(i) for micro-batch i; this closure takes no "
                "argument, i.e. the whole batch, which MSAM cannot split"
            )
        if self._micro_batches_done:
            raise RuntimeError(
                f"{self._micro_batches_done} of {self.m} micro-batches of a two-step loop are "
                "pending; finish them with first_step()/second_step()"
            )
        closure = torch.enable_grad()(closure)
        losses = []
        for index in range(self.m):
            losses.append(torch.as_tensor(closure(index)).detach())
            self.first_step(zero_grad=True)
            closure(index)
            self.second_step()
        return torch.stack(losses).mean()
