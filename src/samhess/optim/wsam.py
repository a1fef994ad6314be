r"""WSAM: sharpness as a weighted regularization term.

WSAM (Yue et al., KDD 2023) minimizes :math:`L(w) + \frac{\gamma}{1-\gamma}\,S(w)` with SAM's
sharpness :math:`S(w) = L(w + e) - L(w)`, :math:`e = \rho\, g/\lVert g\rVert`. Its gradient,
with :math:`\alpha = \gamma/(1-\gamma)`, :math:`g = \nabla L(w)` and
:math:`g_s = \nabla L(w + e)`, is :math:`g + \alpha\,(g_s - g)`; :math:`\gamma = 1/2` is SAM.
The paper's algorithm decouples the sharpness term from the base optimizer, as decoupled weight
decay does: the base optimizer (its momentum, its Adam moments) sees only :math:`g`, and the
sharpness gradient is applied with the learning rate alone,

.. math::

    w \leftarrow \mathrm{base}(w, g) - \mathrm{lr}\;\alpha\,(g_s - g).

Reference:
    Y. Yue, J. Jiang, Z. Ye, N. Gao, Y. Liu, K. Zhang. Sharpness-Aware Minimization Revisited:
    Weighted Sharpness as a Regularization Term. KDD 2023 (Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_bool, check_half_open_unit_interval
from samhess.optim._hyperparameter import Hyperparameter
from samhess.optim.sam import SAM, StepGroup, first_gradients_of, gradients_of

__all__ = ["WSAM"]


class WSAM(SAM):
    r"""Weighted SAM over any torch optimizer.

    With :math:`\alpha = \gamma/(1-\gamma)`:

    * ``decouple=True`` (the paper's algorithm): the base optimizer steps with :math:`g`, then
      :math:`w \leftarrow w - \mathrm{lr}\,\alpha\,(g_s - g)` with each group's current
      learning rate;
    * ``decouple=False``: the base optimizer steps with :math:`g + \alpha\,(g_s - g)`, the
      gradient of the weighted objective.

    First order:
        With a plain SGD base both forms give
        :math:`\Delta w = -\mathrm{lr}\,\bigl(g + \tfrac{\gamma}{1-\gamma}\,\rho\,
        H g/\lVert g\rVert\bigr)`; with momentum or Adam they differ, since the base
        optimizer's state then sees only :math:`g` (decoupled) or the whole gradient.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        gamma: weight :math:`\gamma \in [0, 1)` of the sharpness term.
        decouple: apply the sharpness gradient outside the base optimizer.
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbation.
        **base_kwargs: keyword arguments of ``base_optimizer``.

    Raises:
        ValueError: with ``decouple=True``, for a base optimizer with ``maximize=True`` or a
            group without a learning rate ``lr``.
    """

    _keeps_first_gradient = True
    _hyperparameters = ("gamma", "decouple")
    gamma = Hyperparameter(check_half_open_unit_interval)
    decouple = Hyperparameter(check_bool)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        gamma: float = 0.9,
        decouple: bool = True,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        self.gamma = gamma
        self.decouple = decouple
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, normalize=True,
                         **base_kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; the decoupled form needs its learning rate and plain minimization."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if self.decouple and group.get("maximize", False):
            raise ValueError("WSAM with decouple=True minimizes; got a group with maximize=True")
        if self.decouple and "lr" not in group:
            raise ValueError("WSAM with decouple=True needs a learning rate 'lr' in every group")

    @property
    def weight(self) -> float:
        r""":math:`\alpha = \gamma / (1 - \gamma)`, the weight of the sharpness gradient."""
        return float(self.gamma / (1.0 - self.gamma))

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        perturbed = gradients_of(p for group in groups for p in group.params)
        first = first_gradients_of(groups)
        if not perturbed:
            return
        if self.decouple:
            # the kept g becomes g - g_s, and p.grad = g_s + (g - g_s) = g for the base step
            torch._foreach_sub_(first, perturbed)
            torch._foreach_add_(perturbed, first)
        else:
            weight = self.weight
            torch._foreach_mul_(perturbed, weight)
            torch._foreach_add_(perturbed, first, alpha=1.0 - weight)

    def _after_base_step(self, groups: list[StepGroup]) -> None:
        if not self.decouple:
            return
        weight = self.weight
        for group in groups:
            if group.params:
                # w - lr alpha (g_s - g), with the kept tensors holding g - g_s
                torch._foreach_add_(group.params, first_gradients_of([group]),
                                    alpha=group.group["lr"] * weight)
