r"""LookSAM: SAM's gradient every k steps, its orthogonal component reused in between.

LookSAM (Liu et al., CVPR 2022) splits SAM's gradient :math:`g_s = \nabla L(w + e)` into a part
along :math:`g = \nabla L(w)` and the part orthogonal to it, :math:`g_v`, which changes slowly.
Every :math:`k`-th step (:math:`t \bmod k = 0`) it takes SAM's step and stores :math:`g_v`; in
between it takes one forward-backward pass and adds the stored direction at the current
gradient's scale:

.. math::

    t \bmod k = 0:&\quad g_s = \nabla L\Bigl(w + \rho\frac{g}{\lVert g\rVert}\Bigr), \quad
    g_v = g_s - \lVert g_s\rVert \cos\theta\, \frac{g}{\lVert g\rVert}, \quad
    \cos\theta = \frac{\langle g, g_s\rangle}{\lVert g\rVert\,\lVert g_s\rVert}, \\
    \text{otherwise}:&\quad g_s = g + \alpha\, \frac{\lVert g\rVert}{\lVert g_v\rVert}\, g_v,

    w \leftarrow \mathrm{base}(w, g_s).

Reference:
    Y. Liu, S. Mai, X. Chen, C.-J. Hsieh, Y. You. Towards Efficient and Scalable
    Sharpness-Aware Minimization. CVPR 2022 (Algorithm 1, LookSAM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_int_at_least, check_nonnegative
from samhess.optim._hyperparameter import Hyperparameter
from samhess.optim.sam import SAM, StepGroup, _global_dots, first_gradients_of, gradients_of

__all__ = ["LookSAM"]

_ORTHOGONAL = "orthogonal_gradient"


def _check_period(name: str, value: object) -> int:
    return check_int_at_least(name, value, 1)


class LookSAM(SAM):
    r"""LookSAM over any torch optimizer: two passes every ``k`` steps, one pass in between.

    Norms and inner products are global, over every parameter with a gradient. Steps are
    counted from 0 (a SAM step); a step the GradScaler skips is not counted, so the next one
    retries it. :math:`g_v` is kept per parameter in ``state[p]["orthogonal_gradient"]``.

    On the single-pass steps ``first_step`` returns ``False``: the loop may skip the second
    forward-backward pass (``step(closure)`` does), which is where the saving is::

        loss_fn(model(x), y).backward()
        if optimizer.first_step(zero_grad=True):
            with disable_running_stats(model):
                loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)

    First order:
        On a SAM step, SAM's :math:`\Delta w = -\mathrm{lr}\,(g + \rho H g/\lVert g\rVert)`.
        On a reuse step, :math:`\Delta w = -\mathrm{lr}\,\bigl(g + \alpha\lVert g\rVert\,
        g_v/\lVert g_v\rVert\bigr)`, with :math:`g_v` from the last SAM step; were it taken
        at the current point, :math:`g_v = \rho\,(I - \hat g\hat g^\top) H g/\lVert g\rVert +
        O(\rho^2)`, so the reuse step adds :math:`\alpha\lVert g\rVert` along the unit
        direction of :math:`(I - \hat g\hat g^\top) H g`, a term of order one in :math:`\rho`.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        k: period of the SAM steps (>= 1; 1 is SAM).
        alpha: weight :math:`\alpha \ge 0` of the reused direction.
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbation.
        **base_kwargs: keyword arguments of ``base_optimizer``.

    Attributes:
        step_count: completed steps, the :math:`t` of the schedule.
    """

    _keeps_first_gradient = True
    _hyperparameters = ("k", "alpha")
    k = Hyperparameter(_check_period)
    alpha = Hyperparameter(check_nonnegative)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        k: int = 5,
        alpha: float = 0.7,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        self.k = k
        self.alpha = alpha
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, normalize=True,
                         **base_kwargs)
        self.step_count = 0

    def next_step_perturbs(self) -> bool:
        """Whether the next step is a SAM step (every ``k``-th, from the first)."""
        return bool(self.step_count % self.k == 0)

    def _perturbs_this_step(self) -> bool:
        return self.next_step_perturbs()

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        params = [p for group in groups for p in group.params]
        if not params:
            return
        grads = gradients_of(params)
        if self._two_pass:
            first = first_gradients_of(groups)
            inner, squared_norm = _global_dots([(grads, first), (first, first)])
            projection = inner / squared_norm if squared_norm > 0.0 else 0.0
            orthogonal = []
            for p in params:
                state = self.state[p]
                if _ORTHOGONAL not in state:
                    state[_ORTHOGONAL] = torch.empty_like(p)
                orthogonal.append(state[_ORTHOGONAL])
            # g_v = g_s - (<g_s, g>/||g||^2) g; the base step keeps g_s
            torch._foreach_copy_(orthogonal, grads)
            torch._foreach_add_(orthogonal, first, alpha=-projection)
            return
        orthogonal = [self.state[p].get(_ORTHOGONAL, torch.zeros_like(p)) for p in params]
        squared_grad, squared_orthogonal = _global_dots([(grads, grads),
                                                         (orthogonal, orthogonal)])
        if squared_orthogonal > 0.0:
            ratio = self.alpha * (squared_grad / squared_orthogonal) ** 0.5
            torch._foreach_add_(grads, orthogonal, alpha=ratio)

    def _after_base_step(self, groups: list[StepGroup]) -> None:
        self.step_count += 1

    def _variant_state(self) -> dict[str, Any]:
        return {**(super()._variant_state() or {}), "step_count": self.step_count}

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        super()._load_variant_state(state)
        self.step_count = check_int_at_least("step_count", state.get("step_count"), 0)
