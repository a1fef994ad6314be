r"""RST: randomized switching between SAM's step and the base optimizer's.

Randomized Sharpness-aware Training (Zhao et al., 2022) takes, at each step, SAM's step with
probability :math:`p` and the base optimizer's plain step otherwise:

.. math::

    b_t \sim \mathrm{Bernoulli}(p), \qquad
    w_{t+1} = \begin{cases}
        \mathrm{base}\bigl(w_t,\; \nabla L(w_t + e_t)\bigr) & b_t = 1, \\
        \mathrm{base}\bigl(w_t,\; \nabla L(w_t)\bigr) & b_t = 0,
    \end{cases}

so a step costs on average :math:`1 + p` forward-backward passes.

Reference:
    Y. Zhao, H. Zhang, X. Hu. Randomized Sharpness-Aware Training for Boosting Computational
    Efficiency in Deep Learning. arXiv:2203.09962, 2022.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_closed_unit_interval
from samhess.optim._hyperparameter import Hyperparameter, resolve_seed
from samhess.optim.sam import SAM

__all__ = ["RST"]


class RST(SAM):
    r"""Randomized switching between SAM (probability ``p``) and the base step.

    The draw :math:`u_t` = ``torch.rand((), generator=optimizer.generator)`` decides step
    :math:`t`: SAM's step when :math:`u_t < p`, the base step otherwise. The generator is a
    CPU ``torch.Generator`` seeded with ``seed``; ``state_dict`` carries its state, so a resumed
    run draws what a straight run would, and a step the GradScaler skips is drawn again.
    Under DDP, give every rank the same ``seed``. The paper also varies :math:`p` over
    training; assign ``optimizer.p`` from a schedule to do that.

    ``first_step`` returns whether the step is a SAM step; on a base step the loop may skip
    the second forward-backward pass, as in :class:`LookSAM`'s recipe (``step(closure)`` does).

    First order:
        With an SGD base a step is SAM's, :math:`-\mathrm{lr}\,(g + \rho H g/\lVert g\rVert)`,
        with probability :math:`p` and :math:`-\mathrm{lr}\, g` otherwise; in expectation
        :math:`\Delta w = -\mathrm{lr}\,(g + p\,\rho\, H g/\lVert g\rVert)`.

    Args:
        params: parameters or parameter-group dicts.
        base_optimizer: builds the base optimizer over the same groups, as for
            :class:`~samhess.optim.SAM` (a class, a ``functools.partial`` or a factory).
        rho: neighbourhood radius (>= 0).
        p: probability :math:`p \in [0, 1]` of a SAM step.
        seed: seed of the generator; ``None`` draws one from torch's global generator (so
            ``torch.manual_seed`` makes the run reproducible).
        adaptive: ASAM's scaling :math:`T = |w|` in the perturbation.
        normalize: ``False`` takes USAM's perturbation on the SAM steps.
        **base_kwargs: keyword arguments of ``base_optimizer``.

    Attributes:
        generator: the ``torch.Generator`` of the draws.
    """

    _hyperparameters = ("p",)
    p = Hyperparameter(check_closed_unit_interval)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        p: float = 0.5,
        seed: int | None = None,
        adaptive: bool = False,
        normalize: bool = True,
        **base_kwargs: Any,
    ) -> None:
        self.p = p
        seed = resolve_seed(seed)
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive,
                         normalize=normalize, **base_kwargs)
        self.generator = torch.Generator().manual_seed(seed)
        self._state_before_draw: torch.Tensor | None = None

    def _draw(self, generator: torch.Generator) -> bool:
        """One step's switch: SAM with probability ``p``."""
        return bool(torch.rand((), generator=generator).item() < self.p)

    def next_step_perturbs(self) -> bool:
        """The next step's draw, read from a copy of the generator (which is not advanced)."""
        copy = torch.Generator(device=self.generator.device)
        copy.set_state(self.generator.get_state())
        return self._draw(copy)

    def _perturbs_this_step(self) -> bool:
        self._state_before_draw = self.generator.get_state()
        return self._draw(self.generator)

    def _step_skipped(self) -> None:
        if self._state_before_draw is not None:
            self.generator.set_state(self._state_before_draw)

    def _variant_state(self) -> dict[str, Any]:
        return {**(super()._variant_state() or {}), "generator": self.generator.get_state()}

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        super()._load_variant_state(state)
        generator_state = state.get("generator")
        if not isinstance(generator_state, torch.Tensor):
            raise ValueError("state_dict lacks RST's generator state")
        self.generator.set_state(generator_state.to(device="cpu", dtype=torch.uint8))
