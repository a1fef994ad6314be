r"""FriendlySAM: perturb along the stochastic-gradient noise, not the full gradient.

F-SAM (Li et al., CVPR 2024) removes from the mini-batch gradient an estimate of the full
gradient, an exponential moving average of past mini-batch gradients, and perturbs along what
remains:

.. math::

    g_t = \nabla L_{B_t}(w_t), \quad m_t = \lambda\, m_{t-1} + (1-\lambda)\, g_t, \quad
    d_t = g_t - \sigma\, m_t, \quad e_t = \rho\,\frac{d_t}{\lVert d_t\rVert}, \quad
    w_{t+1} = \mathrm{base}\bigl(w_t,\; \nabla L_{B_t}(w_t + e_t)\bigr),

with :math:`m_0 = 0`.

Reference:
    T. Li, P. Zhou, Z. He, X. Cheng, X. Huang. Friendly Sharpness-Aware Minimization.
    CVPR 2024.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_half_open_unit_interval, check_nonnegative
from samhess.optim._hyperparameter import Hyperparameter
from samhess.optim.sam import SAM, StepGroup

__all__ = ["FriendlySAM"]

_AVERAGE = "gradient_average"


class FriendlySAM(SAM):
    r"""Friendly SAM over any torch optimizer.

    The moving average :math:`m_t` (per parameter, ``state[p]["gradient_average"]``, in
    unscaled units) includes the current gradient, as in the paper's update; it starts from
    zero and is updated only on steps that complete (a step the GradScaler skips leaves it
    alone). ``sigma=0`` is SAM.

    First order:
        With an SGD base, :math:`\Delta w = -\mathrm{lr}\,\bigl(g + \rho\, H d/\lVert d\rVert
        \bigr)`, :math:`d = g - \sigma m_t`: SAM's formula with :math:`d` in place of
        :math:`g`, where :math:`m_t` carries the past gradients.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        sigma: weight :math:`\sigma \ge 0` of the full-gradient estimate removed.
        lmbda: averaging factor :math:`\lambda \in [0, 1)` of :math:`m_t`.
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbation.
        **base_kwargs: keyword arguments of ``base_optimizer``.
    """

    _hyperparameters = ("sigma", "lmbda")
    sigma = Hyperparameter(check_nonnegative)
    lmbda = Hyperparameter(check_half_open_unit_interval)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        sigma: float = 1.0,
        lmbda: float = 0.9,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        self.sigma = sigma
        self.lmbda = lmbda
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, normalize=True,
                         **base_kwargs)
        self._staged: dict[torch.Tensor, torch.Tensor] = {}
        self._directions: dict[torch.Tensor, torch.Tensor] = {}
        self._staged_params: list[torch.Tensor] = []

    def _perturb(self, groups: list[StepGroup], inverse_scale: float) -> bool:
        self._staged_params = []
        return super()._perturb(groups, inverse_scale)

    def _perturbation_directions(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], inverse_scale: float
    ) -> list[torch.Tensor]:
        averages = []
        for p in params:
            state = self.state[p]
            if _AVERAGE not in state:
                state[_AVERAGE] = torch.zeros_like(p)
            averages.append(state[_AVERAGE])
        # m_t goes to a staging buffer, committed once the step is taken
        staged = self._buffers_for(self._staged, params)
        torch._foreach_copy_(staged, averages)
        torch._foreach_mul_(staged, self.lmbda)
        torch._foreach_add_(staged, grads, alpha=(1.0 - self.lmbda) * inverse_scale)
        directions = self._buffers_for(self._directions, params)
        torch._foreach_copy_(directions, grads)
        torch._foreach_add_(directions, staged, alpha=-self.sigma / inverse_scale)
        self._staged_params.extend(params)
        return directions

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        for p in self._staged_params:
            # swap: the new average into the state, the old one becomes the next staging buffer
            self.state[p][_AVERAGE], self._staged[p] = self._staged[p], self.state[p][_AVERAGE]
        self._staged_params = []
