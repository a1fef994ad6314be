r"""bSAM: Bayesian SAM, SAM as a relaxation of the Bayes objective.

Möllenhoff & Khan (ICLR 2023) show that SAM's objective is the optimal convex relaxation of a
variational Bayes objective over Gaussian posteriors :math:`\mathcal N(w, \sigma^2)`,
:math:`\sigma^2 = 1/(N s)`, and derive an Adam-like algorithm that learns the precision
:math:`s` along with the mean :math:`w`. One step, elementwise, with :math:`N` training examples,
weight decay (prior precision over :math:`N`) :math:`\delta` and damping :math:`\gamma`:

.. math::

    \varepsilon &\sim \mathcal N\bigl(0, 1/(N s)\bigr), \qquad
    g_\varepsilon = \nabla L(w + \varepsilon), \qquad
    e = \rho\, \frac{g_\varepsilon}{s}, \qquad
    g = \nabla L(w + e), \\
    m &\leftarrow \beta_1 m + (1 - \beta_1)\,(g + \delta w), \qquad
    w \leftarrow w - \mathrm{lr}\, \frac{m}{s}, \\
    s &\leftarrow \beta_2 s
        + (1 - \beta_2)\,\bigl(\sqrt{s}\,|g_\varepsilon| + \delta + \gamma\bigr),

from :math:`m = 0` and :math:`s = s_0`; the weight step divides by :math:`s` before its update.

Reference:
    T. Möllenhoff, M. E. Khan. SAM as an Optimal Relaxation of Bayes. ICLR 2023 (Algorithm 1,
    and the authors' code, team-approx-bayes/bayesian-sam).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch.optim import Optimizer

from samhess._validation import (
    check_half_open_unit_interval,
    check_int_at_least,
    check_nonnegative,
    check_positive,
)
from samhess.optim._hyperparameter import resolve_seed
from samhess.optim.sam import SAM, StepGroup, _global_norm, first_gradients_of, gradients_of

__all__ = ["BSAM"]

_MOMENTUM = "momentum"
_PRECISION = "precision"


def _check_betas(betas: object) -> tuple[float, float]:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    return (check_half_open_unit_interval("betas[0]", betas[0]),
            check_half_open_unit_interval("betas[1]", betas[1]))


def _check_group(group: dict[str, Any]) -> None:
    check_positive("lr", group["lr"])
    _check_betas(group["betas"])
    check_nonnegative("weight_decay", group["weight_decay"])
    check_nonnegative("damping", group["damping"])
    check_int_at_least("num_data", group["num_data"], 1)
    check_positive("s_init", group["s_init"])


class _BayesianUpdate(Optimizer):
    """bSAM's own update of the mean and the precision, BSAM's base optimizer.

    It reads the gradient at :math:`w + e` from ``p.grad`` and the noisy gradient
    :math:`g_\\varepsilon` from :attr:`noisy_gradients`, which :class:`BSAM` fills before each
    step.
    """

    def __init__(self, params: Any, lr: float, betas: tuple[float, float], weight_decay: float,
                 damping: float, num_data: int, s_init: float) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, damping=damping,
                        num_data=num_data, s_init=s_init)
        super().__init__(params, defaults)
        self.noisy_gradients: dict[torch.Tensor, torch.Tensor] = {}

    def precision(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The precision :math:`s` of ``p`` (:math:`s_0` everywhere before the first step)."""
        state = self.state[p]
        if _PRECISION not in state:
            state[_PRECISION] = torch.full_like(p, float(group["s_init"]))
        precision: torch.Tensor = state[_PRECISION]
        return precision

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        if closure is not None:
            raise RuntimeError("BSAM's update takes no closure; call BSAM.step(closure)")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay, damping = group["lr"], group["weight_decay"], group["damping"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                noisy = self.noisy_gradients.get(p)
                if noisy is None:
                    raise RuntimeError(
                        "a parameter has a gradient at w + e but none from the noisy pass at "
                        "w + eps"
                    )
                precision = self.precision(p, group)
                state = self.state[p]
                if _MOMENTUM not in state:
                    state[_MOMENTUM] = torch.zeros_like(p)
                momentum = state[_MOMENTUM]
                momentum.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                momentum.add_(p, alpha=(1.0 - beta1) * decay)
                p.addcdiv_(momentum, precision, value=-lr)
                spread = precision.sqrt().mul_(noisy.abs()).add_(decay + damping)
                precision.mul_(beta2).add_(spread, alpha=1.0 - beta2)
        self.noisy_gradients = {}


class BSAM(SAM):
    r"""Bayesian SAM, with its own Adam-like update (no base optimizer).

    A step takes two forward-backward passes: the first at a random point
    :math:`w + \varepsilon` of the posterior, the second at :math:`w + e` with
    :math:`e = \rho\, g_\varepsilon / s`; see the module docstring for the update. The noise is
    drawn parameter by parameter, in ``param_groups`` order, as
    ``torch.randn(p.shape, generator=optimizer.generator, dtype=p.dtype)`` times
    :math:`1/\sqrt{N s}`; the generator lives on the first parameter's device, is seeded with
    ``seed`` and is saved by ``state_dict``. The precision :math:`s` and the momentum live in
    ``base_optimizer.state[p]`` (``"precision"``, ``"momentum"``); after training,
    :math:`1/(N s)` is the posterior variance.

    Closure: ``step(closure)`` runs the first pass inside :meth:`noisy_weights` and returns its
    loss (at :math:`w + \varepsilon`). Two-step::

        with optimizer.noisy_weights():                # w -> w + eps, back to w on exit
            loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)           # w -> w + rho g_eps / s
        with disable_running_stats(model):
            loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)          # back to w, bSAM's update

    ``first_step`` raises unless the gradients come from such a noisy pass. With a model that
    has BatchNorm, run the noisy pass inside ``disable_running_stats`` too, if its statistics
    should come from :math:`w` only.

    First order:
        None in :math:`(g, Hg)`: the perturbation is the gradient at a random point, divided
        elementwise by the learned precision :math:`s`.

    Args:
        params: parameters or parameter-group dicts (each group may set the keyword arguments
            below except ``seed``).
        num_data: the number :math:`N` of training examples (the official code multiplies it
            by a data-augmentation factor).
        lr: learning rate (> 0).
        betas: :math:`(\beta_1, \beta_2)`, averaging factors of the momentum and the precision.
        weight_decay: :math:`\delta \ge 0`, the prior precision divided by :math:`N`.
        rho: neighbourhood radius (>= 0).
        damping: :math:`\gamma \ge 0`, added to the precision's update.
        s_init: initial precision :math:`s_0 > 0`.
        seed: seed of the noise generator; ``None`` draws one from torch's global generator.

    Attributes:
        generator: the ``torch.Generator`` of the noise.
    """

    _keeps_first_gradient = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        num_data: int,
        lr: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-4,
        rho: float = 0.01,
        damping: float = 0.1,
        s_init: float = 1.0,
        seed: int | None = None,
    ) -> None:
        seed = resolve_seed(seed)
        super().__init__(params, _BayesianUpdate, rho=rho, adaptive=False, normalize=False,
                         lr=lr, betas=betas, weight_decay=weight_decay, damping=damping,
                         num_data=num_data, s_init=s_init)
        self._update = cast(_BayesianUpdate, self.base_optimizer)
        device = self.param_groups[0]["params"][0].device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._noisy_pass_done = False
        self._in_noisy_pass = False
        self._state_before_noise: torch.Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, validating bSAM's settings."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["adaptive"] or group["normalize"]:
            raise ValueError(
                "BSAM's perturbation is rho g_eps / s: a group cannot set adaptive=True or "
                "normalize=True"
            )
        _check_group(group)

    @contextmanager
    def noisy_weights(self) -> Iterator[None]:
        r"""Context manager: the weights are :math:`w + \varepsilon` inside, :math:`w` after.

        Raises:
            RuntimeError: between ``first_step`` and ``second_step``, or when nested.
        """
        if self._pending or self._in_noisy_pass:
            raise RuntimeError("noisy_weights() must run before first_step(), and not nested")
        self._state_before_noise = self.generator.get_state()
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.no_grad():
            saved = self._weight_buffers(params)
            torch._foreach_copy_(saved, params)
            for group in self.param_groups:
                for p in group["params"]:
                    precision = self._update.precision(p, group)
                    noise = torch.randn(p.shape, generator=self.generator,
                                        device=self.generator.device, dtype=p.dtype)
                    p.addcmul_(noise.to(p.device), torch.rsqrt(precision * group["num_data"]))
        self._in_noisy_pass = True
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
            self._in_noisy_pass = False
        self._noisy_pass_done = True

    def _first_pass(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self.noisy_weights():
            return closure()

    def _perturbs_this_step(self) -> bool:
        if not self._noisy_pass_done:
            raise RuntimeError(
                "BSAM.first_step() needs the gradient at w + eps: run the first backward inside "
                "`with optimizer.noisy_weights():` (step(closure) does)"
            )
        self._noisy_pass_done = False
        return True

    def _perturb(self, groups: list[StepGroup], inverse_scale: float) -> bool:
        grads = gradients_of(p for group in groups for p in group.params)
        norm, norm_value = _global_norm(grads)
        self.last_grad_norm = norm * inverse_scale
        if not math.isfinite(norm_value):
            return False
        for step_group in groups:
            params, group = step_group.params, step_group.group
            precisions = [self._update.precision(p, group) for p in params]
            self._save_weights(params)
            torch._foreach_addcdiv_(params, gradients_of(params), precisions,
                                    value=group["rho"] * inverse_scale)
        return True

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        params = [p for group in groups for p in group.params]
        self._update.noisy_gradients = dict(zip(params, first_gradients_of(groups)))

    def _step_skipped(self) -> None:
        if self._state_before_noise is not None:
            self.generator.set_state(self._state_before_noise)

    def _variant_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        generator_state = state.get("generator")
        if not isinstance(generator_state, torch.Tensor):
            raise ValueError("state_dict lacks BSAM's generator state")
        self.generator.set_state(generator_state.to(device="cpu", dtype=torch.uint8))
