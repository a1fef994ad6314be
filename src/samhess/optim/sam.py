r"""Sharpness-Aware Minimization and its unnormalized and adaptive variants.

One SAM step at weights :math:`w` with mini-batch loss :math:`L` is

.. math::

    g = \nabla L(w), \qquad
    e = \rho\,\frac{T^2 g}{\lVert T g \rVert}, \qquad
    w \leftarrow \mathrm{base}\bigl(w, \nabla L(w + e)\bigr),

where ``base`` is one step of any torch optimizer (SGD, AdamW, ...) taken from :math:`w` with
the gradient measured at the perturbed point :math:`w + e`, and :math:`\lVert\cdot\rVert` is the
2-norm over *every* parameter that has a gradient, across all parameter groups. The three
variants differ only in :math:`T` and in the normalization:

* SAM (Foret et al., 2021): :math:`T = I`, so :math:`e = \rho\, g / \lVert g \rVert`.
* ASAM (Kwon et al., 2021): :math:`T = \operatorname{diag}(|w|)`, so
  :math:`e = \rho\, |w|^2 g / \lVert |w|\, g \rVert` (elementwise :math:`|w|`).
* USAM (Andriushchenko & Flammarion, 2022): no normalization, :math:`e = \rho\, T^2 g`
  (:math:`e = \rho g` without ``adaptive``); the form the first-order analysis of the step uses.

References:
    P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-Aware Minimization for Efficiently
    Improving Generalization. ICLR 2021.

    J. Kwon, J. Kim, H. Park, I. K. Choi. ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks. ICML 2021.

    M. Andriushchenko, N. Flammarion. Towards Understanding Sharpness-Aware Minimization.
    ICML 2022.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import check_bool, check_nonnegative

__all__ = ["SAM", "USAM", "ASAM"]

_SAM_GROUP_KEYS = frozenset({"rho", "adaptive", "normalize"})


def _global_norm(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The 2-norm of the concatenation of ``tensors``, as a tensor and as a Python float.

    inf/NaN only if an entry is inf/NaN. The fast path is one foreach kernel plus one reduction
    in the tensors' dtype, and one host synchronization (the float). Its sum of squares
    overflows float32 once the norm passes ~1.8e19, which gradients carrying a large
    GradScaler scale can reach while every entry is still finite; that rare case is recomputed
    in float64.
    """
    norms = torch._foreach_norm(tensors)
    device = norms[0].device
    dtype = norms[0].dtype if all(n.dtype == norms[0].dtype for n in norms) else torch.float32
    norm = torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))
    value = norm.item()
    if math.isfinite(value) or not all(torch.isfinite(t).all() for t in tensors):
        return norm, value
    wide = [torch.linalg.vector_norm(t, dtype=torch.float64).to(device) for t in tensors]
    norm = torch.linalg.vector_norm(torch.stack(wide))
    return norm, norm.item()


def _check_base_optimizer(base_optimizer: object) -> str:
    """Refuse what cannot build a base optimizer; return the name that error messages use.

    Keyword arguments that SAM's own group keys would override are refused where the signature
    can be read (a class, a ``functools.partial``, a Python function).
    """
    if isinstance(base_optimizer, Optimizer):
        raise TypeError(
            "base_optimizer must build an optimizer (a class such as torch.optim.SGD, a "
            "functools.partial or a factory), not be one; got an instance of "
            f"{type(base_optimizer).__name__}"
        )
    if not callable(base_optimizer):
        raise TypeError(
            "base_optimizer must be a callable that builds a torch.optim.Optimizer, such as "
            f"torch.optim.SGD, got {base_optimizer!r}"
        )
    name = getattr(base_optimizer, "__name__", None) or repr(base_optimizer)
    if isinstance(base_optimizer, type) and not issubclass(base_optimizer, Optimizer):
        raise TypeError(
            f"base_optimizer {name} is a class but not a torch.optim.Optimizer subclass"
        )
    try:
        accepted = set(inspect.signature(base_optimizer).parameters)
    except (TypeError, ValueError):  # builtins and some C extensions have no readable signature
        accepted = set()
    shadowed = _SAM_GROUP_KEYS & accepted
    if shadowed:
        raise ValueError(
            f"base_optimizer {name} has its own {sorted(shadowed)} argument, which SAM's "
            "param-group key of the same name would override"
        )
    return name


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization over any torch optimizer.

    ``SAM`` builds ``base_optimizer(param_groups, **base_kwargs)`` over the *same* parameter-group
    dictionaries, so a learning-rate scheduler attached to the ``SAM`` object changes the learning
    rate the base optimizer uses, and ``state_dict()`` carries the base optimizer's state
    (momentum, Adam moments, step counts) so that a resumed run continues bit-identically.

    The perturbation is (see the module docstring for the maths)

    * ``normalize=True, adaptive=False`` (SAM): :math:`e = \rho\, g / \lVert g \rVert`;
    * ``normalize=False`` (USAM): :math:`e = \rho\, g`;
    * ``adaptive=True`` (ASAM): :math:`e = \rho\, |w|^2 g / \lVert |w|\, g \rVert`
      (with ``normalize=False``: :math:`e = \rho\, |w|^2 g`).

    ``rho``, ``adaptive`` and ``normalize`` are per-group keys; the norm in the denominator is
    always the global one, over every parameter of every group that has a gradient. A zero
    gradient gives :math:`e = 0`, never NaN. A base optimizer with ``maximize=True`` is perturbed
    in the direction that lowers its objective (:math:`-e`).

    Two ways to drive it:

    Two-step (any loop, GradScaler, gradient accumulation)::

        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)        # w -> w + e
        with disable_running_stats(model):
            loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)       # back to w, base step with grad at w + e

    Closure (``closure`` zeroes the gradients, runs forward and backward, returns the loss)::

        loss = optimizer.step(closure)              # loss at w

    ``step()`` *without* a closure completes a step begun by ``first_step`` (``second_step`` and
    ``GradScaler.step`` call it that way); with none pending it raises.

    Mixed precision: pass the ``torch.amp.GradScaler`` to both steps. ``first_step`` reads the
    scaled gradients (it divides by the scale where the formula is not scale-invariant, i.e. for
    USAM); if they hold inf/NaN it leaves the weights at :math:`w` and keeps those gradients
    (even with ``zero_grad=True``) so that the second backward accumulates onto them and the
    scaler sees the overflow. ``second_step`` restores :math:`w` *before* calling
    ``grad_scaler.step``, so a skipped step leaves parameters and optimizer state exactly as they
    were; :attr:`skipped_last_step` then reads ``True``. This costs one host synchronization per
    step (the finiteness test of the gradient norm), as ``GradScaler.step`` itself does.

    Args:
        params: parameters or parameter-group dicts, as for any torch optimizer.
        base_optimizer: anything that builds a torch optimizer from parameter groups and keyword
            arguments: an optimizer *class* (``torch.optim.SGD``, ``torch.optim.AdamW``, ...), a
            ``functools.partial`` of one (what ``timm.optim.get_optimizer_class`` returns) or a
            factory function. It is called once, as ``base_optimizer(param_groups, **base_kwargs)``.
        rho: neighbourhood radius (>= 0). For USAM it multiplies the raw gradient, so its scale
            differs from SAM's.
        adaptive: use ASAM's elementwise scaling :math:`T = \operatorname{diag}(|w|)`.
        normalize: divide by the global norm :math:`\lVert T g \rVert` (SAM, ASAM); ``False``
            gives USAM.
        **base_kwargs: keyword arguments of ``base_optimizer`` (``lr``, ``momentum``, ...).

    Attributes:
        base_optimizer: the base optimizer instance.
        last_grad_norm: the global norm :math:`\lVert T g \rVert` (unscaled) measured by the
            last ``first_step``, a 0-dim tensor (``None`` before the first one).
        skipped_last_step: ``True`` when the last ``second_step`` was skipped by the GradScaler.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        normalize: bool = True,
        **base_kwargs: Any,
    ) -> None:
        name = _check_base_optimizer(base_optimizer)
        rho = check_nonnegative("rho", rho)
        defaults = dict(
            rho=rho,
            adaptive=check_bool("adaptive", adaptive),
            normalize=check_bool("normalize", normalize),
            **base_kwargs,
        )
        super().__init__(params, defaults)
        built = base_optimizer(self.param_groups, **base_kwargs)
        if not isinstance(built, Optimizer):
            raise TypeError(
                f"base_optimizer {name} must build a torch.optim.Optimizer, "
                f"got {type(built).__name__}"
            )
        own = [p for group in self.param_groups for p in group["params"]]
        theirs = [p for group in built.param_groups for p in group["params"]]
        if len(own) != len(theirs) or any(a is not b for a, b in zip(own, theirs)):
            raise ValueError(
                f"base_optimizer {name} built an optimizer over other parameters than the "
                f"{len(own)} it was given; it must build over the parameter groups it receives"
            )
        self.base_optimizer = built
        # One list of group dicts for both: schedulers and add_param_group act on both at once.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(
            {k: v for k, v in self.base_optimizer.defaults.items() if k not in self.defaults}
        )
        self.last_grad_norm: torch.Tensor | None = None
        self.skipped_last_step = False
        self._saved_weights: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed_params: list[torch.Tensor] = []
        self._pending = False
        self._scaler_may_step = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to SAM and its base optimizer (they share the list), validating ``rho``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonnegative("rho", group["rho"])
        check_bool("adaptive", group["adaptive"])
        check_bool("normalize", group["normalize"])

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups, which would drop the base
        # optimizer; an instance-level ``step`` is a scheduler's patch bound to the original.
        state = self.__dict__.copy()
        state.pop("step", None)
        return state

    @torch.no_grad()
    def first_step(
        self, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> None:
        r"""Move from :math:`w` to :math:`w + e` using the current gradients :math:`g`.

        Args:
            zero_grad: clear the gradients afterwards, ready for the second backward pass.
            grad_scaler: the ``torch.amp.GradScaler`` whose scale the gradients carry, if any.

        Raises:
            RuntimeError: if a previous ``first_step`` was never completed by ``second_step``
                (the weights would still be at :math:`w + e`).
        """
        if self._pending:
            raise RuntimeError(
                "first_step() called twice without second_step(): the weights are still at the "
                "perturbed point w + e"
            )
        inverse_scale = 1.0
        if grad_scaler is not None and grad_scaler.is_enabled():
            inverse_scale = 1.0 / grad_scaler.get_scale()

        per_group = []
        scaled_grads: list[torch.Tensor] = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adaptive"]:
                abs_weights = torch._foreach_abs(params)
                weighted = torch._foreach_mul(abs_weights, grads)
            else:
                abs_weights, weighted = None, grads
            per_group.append((group, params, abs_weights, weighted))
            scaled_grads.extend(weighted)

        self._pending = True
        self._perturbed_params = []
        if not scaled_grads:
            self.last_grad_norm = None
            return
        norm, norm_value = _global_norm(scaled_grads)
        self.last_grad_norm = norm * inverse_scale
        if not math.isfinite(norm_value):
            # Overflowed (or NaN) gradients: stay at w and keep them, so the second backward
            # accumulates onto them and GradScaler.step sees the overflow and skips.
            return

        tiny = torch.finfo(torch.float32).tiny
        for group, params, abs_weights, weighted in per_group:
            if group["normalize"]:
                coefficient = group["rho"] / max(norm_value, tiny)
            else:
                coefficient = group["rho"] * inverse_scale
            if group.get("maximize", False):
                coefficient = -coefficient
            torch._foreach_copy_(self._weight_buffers(params), params)
            if abs_weights is None:
                torch._foreach_add_(params, weighted, alpha=coefficient)
            else:
                torch._foreach_addcmul_(params, abs_weights, weighted, value=coefficient)
            self._perturbed_params.extend(params)

        if zero_grad:
            self.zero_grad()

    def _weight_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        # Allocated once per parameter and reused, so a step allocates nothing persistent.
        buffers = []
        for p in params:
            buffer = self._saved_weights.get(p)
            if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype:
                buffer = self._saved_weights[p] = torch.empty_like(p)
            buffers.append(buffer)
        return buffers

    @torch.no_grad()
    def _restore(self) -> None:
        params = self._perturbed_params
        if params:
            torch._foreach_copy_(params, [self._saved_weights[p] for p in params])
        self._perturbed_params = []
        self._pending = False

    def second_step(
        self, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Return to :math:`w`, then step the base optimizer with the gradients taken at :math:`w+e`.

        Args:
            zero_grad: clear the gradients afterwards.
            grad_scaler: a ``torch.amp.GradScaler``; the base step then goes through
                ``grad_scaler.step`` and is skipped (weights and state untouched) when the
                gradients hold inf/NaN. Call ``grad_scaler.update()`` afterwards as usual.

        Raises:
            RuntimeError: if no ``first_step`` is pending.
        """
        if not self._pending:
            raise RuntimeError("second_step() called without a preceding first_step()")
        if grad_scaler is None:
            self.step()
        else:
            self._restore()
            self.skipped_last_step = True
            self._scaler_may_step = True
            try:
                grad_scaler.step(self)
            finally:
                self._scaler_may_step = False
        if zero_grad:
            self.zero_grad()

    def _complete_step(self) -> None:
        if not (self._pending or self._scaler_may_step):
            raise RuntimeError(
                "SAM.step() needs a closure, or a first_step() for it to complete; for a plain "
                "base step use optimizer.base_optimizer.step()"
            )
        self._restore()
        self.base_optimizer.step()
        self.skipped_last_step = False

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One full SAM step.

        Args:
            closure: zeroes the gradients, runs the forward and backward passes and returns the
                loss. It is called twice: at :math:`w` and at :math:`w + e`. Without a closure,
                ``step()`` completes a pending ``first_step``.

        Returns:
            The loss at :math:`w` returned by the first closure call, or ``None`` without one.

        Raises:
            RuntimeError: without a closure and without a pending ``first_step``.
        """
        if closure is None:
            self._complete_step()
            return None
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self._complete_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The SAM groups plus the base optimizer's full state under ``"base_optimizer"``."""
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`, the base optimizer's state included."""
        if "base_optimizer" not in state_dict:
            raise ValueError(
                "state_dict has no 'base_optimizer' entry; it was not saved by SAM.state_dict()"
            )
        state_dict = dict(state_dict)
        base_state = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base_state)
        self.base_optimizer.param_groups = self.param_groups


class USAM(SAM):
    r"""Unnormalized SAM: ``SAM(..., normalize=False)``, :math:`e = \rho\, g`.

    Andriushchenko & Flammarion (ICML 2022) analyse this form; to first order its step is the
    gradient pre-multiplied by :math:`I + \rho H`. See :class:`SAM` for the arguments.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params, base_optimizer, rho=rho, adaptive=adaptive, normalize=False, **base_kwargs
        )


class ASAM(SAM):
    r"""Adaptive SAM: ``SAM(..., adaptive=True)``, :math:`e = \rho\,|w|^2 g/\lVert |w|\,g\rVert`.

    Kwon et al. (ICML 2021) use much larger radii than SAM (0.5 and more in their CIFAR runs).
    Their operator is :math:`T = \operatorname{diag}(|w| + \eta)`; here :math:`\eta = 0`, so
    coordinates with :math:`w = 0` are never perturbed. See :class:`SAM` for the arguments.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        normalize: bool = True,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(
            params, base_optimizer, rho=rho, adaptive=True, normalize=normalize, **base_kwargs
        )
