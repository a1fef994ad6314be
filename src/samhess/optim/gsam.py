r"""GSAM: surrogate-gap guided sharpness-aware minimization.

GSAM (Zhuang et al., ICLR 2022) perturbs like SAM and then removes part of the *vertical*
component of the gradient at :math:`w`, the part orthogonal to the perturbed gradient, which
lowers the surrogate gap :math:`L(w + e) - L(w)` without changing the perturbed loss to first
order:

.. math::

    g = \nabla L(w), \quad e = \rho\,\frac{g}{\lVert g\rVert}, \quad
    g_p = \nabla L(w + e), \quad
    g_\perp = g - \frac{\langle g, g_p\rangle}{\lVert g_p\rVert^2}\, g_p, \quad
    w \leftarrow \mathrm{base}\bigl(w,\; g_p - \alpha\, g_\perp\bigr).

Reference:
    J. Zhuang, B. Gong, L. Yuan, Y. Cui, H. Adam, N. Dvornek, S. Tatikonda, J. Duncan, T. Liu.
    Surrogate Gap Minimization Improves Sharpness-Aware Training. ICLR 2022 (Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_nonnegative
from samhess.optim._hyperparameter import Hyperparameter
from samhess.optim.sam import SAM, StepGroup, _global_dots, first_gradients_of, gradients_of

__all__ = ["GSAM"]


class GSAM(SAM):
    r"""Surrogate Gap Guided SAM over any torch optimizer.

    The base optimizer steps with :math:`g_p - \alpha g_\perp`, where :math:`g_p` is the
    gradient at :math:`w + e` (SAM's perturbation, ASAM's with ``adaptive=True``) and
    :math:`g_\perp` the component of :math:`g = \nabla L(w)` orthogonal to :math:`g_p`, both
    taken globally over every parameter with a gradient (see the module docstring).
    :math:`\alpha = 0` is SAM. The paper schedules :math:`\rho_t` in proportion to the
    learning rate; here ``rho`` is a per-group key that a scheduler may set.

    First order:
        With an SGD base and :math:`\hat g = g/\lVert g\rVert`,
        :math:`g_p = g + \rho H\hat g + O(\rho^2)` and
        :math:`g_\perp = -\rho\,(I - \hat g\hat g^\top) H\hat g + O(\rho^2)`, so

        .. math::

            \Delta w = -\mathrm{lr}\,\Bigl(g + \frac{\rho}{\lVert g\rVert}
            \bigl[(1 + \alpha)\, H g - \alpha\, (\hat g^\top H g)\, \hat g\bigr]\Bigr).

    Cost: one copy of :math:`g` kept through the second pass, two global inner products and
    one host synchronization more than SAM.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        alpha: weight :math:`\alpha \ge 0` of the vertical component removed.
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbation.
        **base_kwargs: keyword arguments of ``base_optimizer``.
    """

    _keeps_first_gradient = True
    _hyperparameters = ("alpha",)
    alpha = Hyperparameter(check_nonnegative)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        alpha: float = 0.4,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        self.alpha = alpha
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, normalize=True,
                         **base_kwargs)

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        perturbed = gradients_of(p for group in groups for p in group.params)
        first = first_gradients_of(groups)
        if not perturbed or self.alpha == 0.0:
            return
        inner, squared_norm = _global_dots([(first, perturbed), (perturbed, perturbed)])
        projection = inner / squared_norm if squared_norm > 0.0 else 0.0
        # g_p - alpha (g - projection g_p) = (1 + alpha projection) g_p - alpha g
        torch._foreach_mul_(perturbed, 1.0 + self.alpha * projection)
        torch._foreach_add_(perturbed, first, alpha=-self.alpha)
