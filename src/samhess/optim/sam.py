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
  :math:`e = \rho\, |w|^2 g / \lVert |w|\, g \rVert` (elementwise :math:`|w|`); the paper's
  :math:`T = \operatorname{diag}(|w| + \eta)`, which the official code applies to weights
  only, is an option of :class:`ASAM`.
* USAM (Andriushchenko & Flammarion, 2022): no normalization, :math:`e = \rho\, T^2 g`
  (:math:`e = \rho g` without ``adaptive``); the form the first-order analysis of the step uses.

The variants in this package (GSAM, WSAM, FriendlySAM, LookSAM, MSAM, RST, BSAM) subclass
:class:`SAM` through its protected hooks.

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
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.optim import Optimizer

from samhess._validation import check_bool, check_nonnegative
from samhess.optim.dtensors import global_norm, local_shards
from samhess.optim.finite import require_finite_gradients

__all__ = ["SAM", "USAM", "ASAM"]

_SAM_GROUP_KEYS = frozenset({"rho", "adaptive", "normalize"})


def _global_norm(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The 2-norm of the concatenation of ``tensors``, as a tensor and as a Python float.

    inf/NaN only if an entry is inf/NaN. The fast path is one foreach kernel plus one reduction
    in the tensors' dtype, and one host synchronization (the float); over DTensor shards (FSDP2)
    it is the norm of the full tensors (:func:`samhess.optim.dtensors.global_norm`). Its sum of squares
    overflows float32 once the norm passes ~1.8e19, which gradients carrying a large
    GradScaler scale can reach while every entry is still finite; that rare case is recomputed
    in float64.
    """
    norm = global_norm(tensors)
    value = norm.item()
    if math.isfinite(value) or not all(torch.isfinite(t).all() for t in tensors):
        return norm, value
    norm = global_norm(tensors, dtype=torch.float64)
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


def _global_dots(pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> list[float]:
    r"""For each pair ``(a, b)``, :math:`\langle a, b\rangle` over the concatenated tensors.

    One dot product per tensor in its own dtype, summed in float64, and one host
    synchronization for all the pairs together.
    """
    device = pairs[0][0][0].device
    sums = [
        torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)).to(device=device, dtype=torch.float64)
                     for x, y in zip(a, b)]).sum()
        for a, b in pairs
    ]
    return torch.stack(sums).tolist()


def gradients_of(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each of ``params``, which must all hold one."""
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        raise RuntimeError("a parameter the step expected to have a gradient has none")
    return cast(list[torch.Tensor], grads)


@dataclass
class StepGroup:
    """The tensors of one parameter group in the current step, as the variant hooks see them.

    Attributes:
        group: the parameter-group dict (shared with the base optimizer).
        params: the group's parameters that hold a gradient.
        first_gradients: for each of ``params``, the gradient :math:`g` of the first pass at
            :math:`w`, unscaled (divided by the GradScaler's scale), when the class keeps it
            (:attr:`SAM._keeps_first_gradient`) on a two-pass step; ``None`` otherwise.
    """

    group: dict[str, Any]
    params: list[torch.Tensor]
    first_gradients: list[torch.Tensor] | None = None


def first_gradients_of(groups: list[StepGroup]) -> list[torch.Tensor]:
    """The kept first-pass gradients of every group, concatenated (two-pass steps of classes
    that keep them)."""
    kept = []
    for group in groups:
        if group.first_gradients is None:
            raise RuntimeError("the first pass's gradient was not kept on this step")
        kept.extend(group.first_gradients)
    return kept


@dataclass
class _GroupPerturbation:
    """One group's move w -> w + e: the parameters with T = 1, and those with their T and T d."""

    group: dict[str, Any]
    params: list[torch.Tensor]
    plain_params: list[torch.Tensor] = field(default_factory=list)
    plain_directions: list[torch.Tensor] = field(default_factory=list)
    scaled_params: list[torch.Tensor] = field(default_factory=list)
    scales: list[torch.Tensor] = field(default_factory=list)
    scaled_directions: list[torch.Tensor] = field(default_factory=list)


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

    First order:
        With a plain SGD base of learning rate :math:`\mathrm{lr}` and :math:`H` the Hessian at
        :math:`w`, :math:`\nabla L(w + e) = g + H e + O(\rho^2)`, so the step is
        :math:`\Delta w = -\mathrm{lr}\,\bigl(g + \rho\, H T^2 g / \lVert T g \rVert\bigr)`
        (SAM: :math:`-\mathrm{lr}\,(g + \rho H g/\lVert g\rVert)`; USAM:
        :math:`-\mathrm{lr}\,(g + \rho H T^2 g)`).

    Two ways to drive it:

    Two-step (any loop, GradScaler, gradient accumulation)::

        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)        # w -> w + e
        with disable_running_stats(model):
            loss_fn(model(x), y).backward()
        optimizer.second_step(zero_grad=True)       # back to w, base step with grad at w + e

    ``first_step`` returns whether the step needs the second forward-backward pass: always
    ``True`` for SAM, ``False`` on the single-pass steps of variants such as :class:`LookSAM`
    and :class:`RST`, where a loop may skip the second pass (running it anyway is harmless).

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

    Variants:
        The sharpness-aware family is written as subclasses that override these protected
        methods; the GradScaler, gradient-accumulation, BatchNorm and checkpoint logic stays in
        this class and applies to every variant. The order within one step is
        :meth:`_perturbs_this_step`, then (two-pass steps) :meth:`_perturb` (by default built
        from :meth:`_perturbation_directions` and :meth:`_scaling`) and the copy of :math:`g`
        (:attr:`_keeps_first_gradient`); after the second pass :meth:`_completes_step`, then,
        when the base step is taken, :meth:`_descent_gradients`, the base step and
        :meth:`_after_base_step`, or, when the GradScaler skips it, :meth:`_step_skipped`.
        State a variant changes before the base step (a random draw, a moving average) must be
        staged and committed in :meth:`_descent_gradients` or :meth:`_after_base_step`, or
        undone in :meth:`_step_skipped`, so that a skipped step changes nothing. Per-parameter
        state goes in ``self.state[p]`` (saved by ``state_dict``); anything else in
        :meth:`_variant_state`.

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
        raise_on_nonfinite: raise :class:`~samhess.errors.DivergenceError` when the gradient at
            :math:`w` or at :math:`w + e` holds inf or NaN (without a ``GradScaler``, whose
            overflow skipping it would pre-empt), with the weights left at :math:`w` and the
            base optimizer's state untouched. Off by default, as in ``torch.optim``, where a
            NaN gradient turns the weights NaN without a word.
        **base_kwargs: keyword arguments of ``base_optimizer`` (``lr``, ``momentum``, ...).

    Attributes:
        base_optimizer: the base optimizer instance.
        last_grad_norm: the global norm :math:`\lVert T g \rVert` (unscaled) measured by the
            last ``first_step``, a 0-dim tensor (``None`` before the first one, and after a
            single-pass step, which measures none).
        skipped_last_step: ``True`` when the last ``second_step`` took no base step (the
            GradScaler skipped it, or, for :class:`MSAM`, micro-batches remain).
    """

    #: Keep a copy of the first pass's gradient :math:`g` for :meth:`_descent_gradients`.
    _keeps_first_gradient: bool = False
    #: Attributes saved under ``state_dict()["variant"]`` and restored by ``load_state_dict``.
    _hyperparameters: tuple[str, ...] = ()

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        normalize: bool = True,
        *,
        raise_on_nonfinite: bool = False,
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
        self.raise_on_nonfinite = check_bool("raise_on_nonfinite", raise_on_nonfinite)
        self._scaler_steps = False  # GradScaler.step is running: it handles inf/NaN itself
        self._saved_weights: dict[torch.Tensor, torch.Tensor] = {}
        self._first_gradient_buffers: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed_params: list[torch.Tensor] = []
        # what first_step recorded: (group, params with a gradient, their kept g or None)
        self._step_record: list[tuple[dict[str, Any], list[torch.Tensor],
                                      list[torch.Tensor] | None]] = []
        # single-pass steps with zero_grad: the gradient g, handed back after the second pass
        self._stashed_gradients: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending = False
        self._two_pass = True
        self._first_pass_finite = True
        self._returned_to_w = False
        self._base_step_due = True

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

    # -- hooks for variants ---------------------------------------------------------------------

    def next_step_perturbs(self) -> bool:
        """Whether the next step will perturb the weights and take the second pass, asked
        without changing anything (the analysis uses it to predict that step). SAM: ``True``;
        variants that sometimes take a single-pass step (LookSAM, RST) answer for theirs."""
        return True

    def _perturbs_this_step(self) -> bool:
        """Whether the step now beginning perturbs the weights and takes the second pass.

        Called once at the start of every step (``first_step``, ``step(closure)``), before any
        state changes. ``False`` makes it a single-pass step: the base step then uses the
        gradient at :math:`w` (through :meth:`_descent_gradients`). SAM: always ``True``.
        """
        return True

    def _perturbation_directions(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], inverse_scale: float
    ) -> list[torch.Tensor]:
        r"""The vectors :math:`d` in :math:`g`'s place in :math:`e = \rho T^2 d/\lVert T d\rVert`.

        Called once per parameter group with the group's parameters and their (scaled)
        gradients; the result must be in the same units as ``grads`` (multiply by
        ``inverse_scale`` to unscale). It must not commit state: a step can still be skipped.
        SAM: the gradients themselves.
        """
        return grads

    def _scaling(
        self, group: dict[str, Any], params: list[torch.Tensor]
    ) -> list[torch.Tensor | None] | None:
        r"""The diagonal operator :math:`T` of the perturbation, one tensor per parameter.

        ``None`` (or a ``None`` entry) is the identity. SAM: :math:`T = |w|` on groups with
        ``adaptive=True``, the identity elsewhere.
        """
        return list(torch._foreach_abs(params)) if group["adaptive"] else None

    def _perturb(self, groups: list[StepGroup], inverse_scale: float) -> bool:
        r"""Move every parameter of ``groups`` from :math:`w` to :math:`w + e`.

        Sets :attr:`last_grad_norm`; saves the weights with :meth:`_save_weights` before moving
        them. Returns ``False``, leaving the weights at :math:`w`, when the gradients hold
        inf/NaN (the GradScaler then skips the step).
        """
        planned: list[_GroupPerturbation] = []
        for step_group in groups:
            params = step_group.params
            directions = self._perturbation_directions(
                params, gradients_of(params), inverse_scale
            )
            scaling = self._scaling(step_group.group, params) or [None] * len(params)
            plan = _GroupPerturbation(step_group.group, params)
            unscaled_directions = []
            for p, d, scale in zip(params, directions, scaling):
                if scale is None:
                    plan.plain_params.append(p)
                    plan.plain_directions.append(d)
                else:
                    plan.scaled_params.append(p)
                    plan.scales.append(scale)
                    unscaled_directions.append(d)
            if plan.scales:
                plan.scaled_directions = list(torch._foreach_mul(plan.scales, unscaled_directions))
            planned.append(plan)
        norm, norm_value = _global_norm(
            [d for plan in planned for d in plan.plain_directions + plan.scaled_directions]
        )
        self.last_grad_norm = norm * inverse_scale
        if not math.isfinite(norm_value):
            return False

        tiny = torch.finfo(torch.float32).tiny
        for plan in planned:
            group = plan.group
            if group["normalize"]:
                coefficient = group["rho"] / max(norm_value, tiny)
            else:
                coefficient = group["rho"] * inverse_scale
            if group.get("maximize", False):
                coefficient = -coefficient
            self._save_weights(plan.params)
            # elementwise on each rank's shard when the parameters are DTensors (FSDP2)
            if plan.plain_params:
                torch._foreach_add_(local_shards(plan.plain_params),
                                    local_shards(plan.plain_directions), alpha=coefficient)
            if plan.scaled_params:
                torch._foreach_addcmul_(local_shards(plan.scaled_params), local_shards(plan.scales),
                                        local_shards(plan.scaled_directions), value=coefficient)
        return True

    def _descent_gradients(self, groups: list[StepGroup]) -> None:
        r"""Turn each ``p.grad`` in place into the gradient the base step uses.

        Called on every step that takes the base step, just before it. ``p.grad`` holds the
        unscaled gradient at :math:`w + e` on a two-pass step, at :math:`w` on a single-pass
        one (``self._two_pass`` tells which). SAM: unchanged.
        """

    def _after_base_step(self, groups: list[StepGroup]) -> None:
        """Called right after the base step (weights at :math:`w_{t+1}`). SAM: nothing."""

    def _completes_step(self) -> bool:
        """Called once per second pass, weights back at :math:`w`; ``False`` defers the base step.

        A variant that gathers several second passes into one base step (:class:`MSAM`)
        collects ``p.grad`` here. SAM: ``True``.
        """
        return True

    def _step_skipped(self) -> None:
        """Called when the GradScaler skipped the base step: undo what the step changed."""

    def _first_pass(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``step(closure)``'s first pass, return its loss. SAM: ``closure()`` at :math:`w`."""
        return closure()

    def _variant_state(self) -> dict[str, Any] | None:
        """What to checkpoint beyond ``self.state[p]``: the hyperparameters named in
        :attr:`_hyperparameters`; variants with counters or generators add them. SAM: none."""
        if not self._hyperparameters:
            return None
        return {"hyperparameters": {name: getattr(self, name) for name in self._hyperparameters}}

    def _load_variant_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`_variant_state` returned (hyperparameters through their checks)."""
        saved = state.get("hyperparameters", {})
        missing = [name for name in self._hyperparameters if name not in saved]
        if missing:
            raise ValueError(
                f"state_dict lacks the {type(self).__name__} hyperparameters {missing}"
            )
        for name in self._hyperparameters:
            setattr(self, name, saved[name])

    # -- helpers for variants --------------------------------------------------------------------

    def _save_weights(self, params: list[torch.Tensor]) -> None:
        """Remember ``params``' current values; the step puts them back before the base step."""
        torch._foreach_copy_(self._weight_buffers(params), local_shards(params))
        self._perturbed_params.extend(params)

    def _weight_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        # Allocated once per parameter and reused, so a step allocates nothing persistent.
        return self._buffers_for(self._saved_weights, params)

    @staticmethod
    def _buffers_for(
        store: dict[torch.Tensor, torch.Tensor], params: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        # shaped like this rank's shard when the parameters are DTensors (FSDP2)
        buffers = []
        for p, shard in zip(params, local_shards(params)):
            buffer = store.get(p)
            if buffer is None or buffer.shape != shard.shape or buffer.dtype != shard.dtype:
                buffer = store[p] = torch.empty_like(shard)
            buffers.append(buffer)
        return buffers

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def first_step(
        self, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> bool:
        r"""Move from :math:`w` to :math:`w + e` using the current gradients :math:`g`.

        Args:
            zero_grad: clear the gradients afterwards, ready for the second backward pass.
            grad_scaler: the ``torch.amp.GradScaler`` whose scale the gradients carry, if any.

        Returns:
            Whether the step needs the second forward-backward pass (at :math:`w + e`). On a
            single-pass step (``False``) the weights stay at :math:`w` and the base step uses
            :math:`g`; a second pass run anyway, at :math:`w`, replaces it.

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
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                groups.append(StepGroup(group, params))
        two_pass = self._perturbs_this_step()

        self._pending, self._returned_to_w, self._base_step_due = True, False, True
        self._two_pass, self._first_pass_finite = two_pass, True
        self._perturbed_params, self._stashed_gradients = [], []
        self._step_record = [(g.group, g.params, None) for g in groups]
        if not two_pass:
            self.last_grad_norm = None
            if zero_grad:
                # The gradients leave p.grad without a copy; a second pass run anyway
                # allocates new ones, which then take their place.
                for step_group in groups:
                    self._stashed_gradients.extend(
                        zip(step_group.params, gradients_of(step_group.params)))
                    for p in step_group.params:
                        p.grad = None
            return False
        if not groups:
            self.last_grad_norm = None
            return True
        if not self._perturb(groups, inverse_scale):
            if self.raise_on_nonfinite and inverse_scale == 1.0:
                self._pending = False
                require_finite_gradients([p for g in groups for p in g.params],
                                         type(self).__name__, "at w")
            # Overflowed (or NaN) gradients: stay at w and keep them, so the second backward
            # accumulates onto them and GradScaler.step sees the overflow and skips.
            self._first_pass_finite = False
            return True
        if self._keeps_first_gradient:
            record: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor] | None]] = []
            for step_group in groups:
                params = step_group.params
                kept = self._buffers_for(self._first_gradient_buffers, params)
                torch._foreach_copy_(kept, gradients_of(params))
                if inverse_scale != 1.0:
                    torch._foreach_mul_(kept, inverse_scale)
                record.append((step_group.group, params, kept))
            self._step_record = record
        if zero_grad:
            # what zero_grad() does, over just the parameters that hold a gradient
            for step_group in groups:
                for p in step_group.params:
                    p.grad = None
        return True

    @torch.no_grad()
    def _return_to_w(self) -> bool:
        """Put the weights back at :math:`w` once per step; whether the base step is due."""
        if self._returned_to_w:
            return self._base_step_due
        params = self._perturbed_params
        if params:
            torch._foreach_copy_(local_shards(params), [self._saved_weights[p] for p in params])
        self._perturbed_params = []
        for p, grad in self._stashed_gradients:
            if p.grad is None:
                p.grad = grad
        self._stashed_gradients = []
        self._returned_to_w = True
        self._base_step_due = self._completes_step()
        return self._base_step_due

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
        if not self._return_to_w():
            self._pending = False
            self.skipped_last_step = True
        elif grad_scaler is None:
            self.step()
        else:
            self.skipped_last_step = True
            self._scaler_steps = True
            try:
                grad_scaler.step(self)
            finally:
                self._scaler_steps = False
                if self._pending:  # the scaler skipped: step() never ran
                    self._pending = False
                    self._step_skipped()
        if zero_grad and self._base_step_due:
            # a deferred base step (MSAM collecting a micro-batch) has already cleared them
            self.zero_grad()

    def _step_groups(self) -> list[StepGroup]:
        groups = []
        for group, params, kept in self._step_record:
            if kept is None:
                present = [p for p in params if p.grad is not None]
                groups.append(StepGroup(group, present))
            else:
                pairs = [(p, k) for p, k in zip(params, kept) if p.grad is not None]
                groups.append(StepGroup(group, [p for p, _ in pairs], [k for _, k in pairs]))
        return groups

    def _complete_step(self) -> None:
        if not self._pending:
            raise RuntimeError(
                "SAM.step() needs a closure, or a first_step() for it to complete; for a plain "
                "base step use optimizer.base_optimizer.step()"
            )
        if not self._return_to_w():
            self._pending = False
            self.skipped_last_step = True
            return
        groups = self._step_groups()
        if self.raise_on_nonfinite and not self._scaler_steps:
            try:
                require_finite_gradients([p for g in groups for p in g.params],
                                         type(self).__name__,
                                         "at w + e" if self._two_pass else "at w")
            except BaseException:
                self._pending, self._step_record = False, []
                raise
        if self._first_pass_finite:
            with torch.no_grad():
                self._descent_gradients(groups)
        self.base_optimizer.step()
        if self._first_pass_finite:
            with torch.no_grad():
                self._after_base_step(groups)
        self.skipped_last_step = False
        self._pending = False
        self._step_record = []

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One full SAM step.

        Args:
            closure: zeroes the gradients, runs the forward and backward passes and returns the
                loss. It is called twice: at :math:`w` and at :math:`w + e` (once on a
                single-pass step). Without a closure, ``step()`` completes a pending
                ``first_step``.

        Returns:
            The loss at :math:`w` returned by the first closure call, or ``None`` without one.

        Raises:
            RuntimeError: without a closure and without a pending ``first_step``.
        """
        if closure is None:
            self._complete_step()
            return None
        closure = torch.enable_grad()(closure)
        loss = self._first_pass(closure)
        if self.first_step(zero_grad=True):
            closure()
        self._complete_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The SAM groups plus the base optimizer's full state under ``"base_optimizer"``.

        A variant's own counters and generators come under ``"variant"``.
        """
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        variant = self._variant_state()
        if variant is not None:
            state["variant"] = {"optimizer": type(self).__name__, **variant}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`, the base optimizer's state included.

        All or nothing: when any part does not fit (``ValueError`` from torch's checks or a
        variant's), SAM and its base optimizer are left exactly as they were.
        """
        if not isinstance(state_dict, dict) or "base_optimizer" not in state_dict:
            raise ValueError(
                "state_dict has no 'base_optimizer' entry; it was not saved by SAM.state_dict()"
            )
        name = type(self).__name__
        variant = state_dict.get("variant")
        saved_by = "SAM" if variant is None else variant.get("optimizer")
        if (variant is None) != (self._variant_state() is None) or (
            variant is not None and saved_by != name
        ):
            raise ValueError(f"state_dict was saved by {saved_by}, not by {name}")
        state_dict = dict(state_dict)
        base_state = state_dict.pop("base_optimizer")
        state_dict.pop("variant", None)
        # torch's loads validate before they change anything, and then replace the ``state``
        # and ``param_groups`` objects rather than write into them: putting the old objects back
        # undoes a load whose later part failed, and keeps every reference to them valid.
        before = [(self.__dict__["state"], self.param_groups),
                  (self.base_optimizer.__dict__["state"], self.base_optimizer.param_groups)]
        previous_variant = self._variant_state()
        try:
            super().load_state_dict(state_dict)
            self.base_optimizer.load_state_dict(base_state)
            if variant is not None:
                self._load_variant_state({k: v for k, v in variant.items() if k != "optimizer"})
        except BaseException:
            for optimizer, (state, groups) in zip((self, self.base_optimizer), before):
                optimizer.__dict__["state"], optimizer.param_groups = state, groups
            if previous_variant is not None:
                self._load_variant_state(previous_variant)
            raise
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
    r"""Adaptive SAM: ``SAM(..., adaptive=True)``, :math:`e = \rho\,T^2 g/\lVert T g\rVert`.

    Kwon et al. (ICML 2021) define the operator :math:`T = \operatorname{diag}(|w| + \eta)` and
    use much larger radii than SAM (0.5 and more in their CIFAR runs). Two conventions:

    * samhess's default, ``eta=0`` on every parameter: :math:`T = \operatorname{diag}(|w|)`,
      so a coordinate with :math:`w = 0` (a zero-initialized bias, a normalization layer's
      shift) is never perturbed;
    * the official code's, ``eta=0.01, weights_only=True``: :math:`T = |w| + \eta` on the
      parameters whose name contains ``"weight"`` (normalization layers' scales included) and
      :math:`T = 1` on all others (biases), which are perturbed like SAM's. Telling them apart
      needs names: build the optimizer from ``model.named_parameters()``.

    Groups with ``adaptive=False`` keep :math:`T = 1` in both conventions.

    First order:
        With an SGD base, :math:`\Delta w = -\mathrm{lr}\,\bigl(g + \rho\, H T^2 g /
        \lVert T g\rVert\bigr)` (without the norm for ``normalize=False``).

    Args:
        params: as for :class:`SAM`; named parameters (``model.named_parameters()``) when
            ``weights_only`` is set.
        base_optimizer: as for :class:`SAM`.
        rho: neighbourhood radius (>= 0).
        normalize: divide by :math:`\lVert T g \rVert`.
        eta: the offset :math:`\eta \ge 0` of :math:`T`.
        weights_only: scale only parameters whose name contains ``"weight"``.
        **base_kwargs: keyword arguments of ``base_optimizer``.

    Raises:
        ValueError: if ``weights_only`` is set and a parameter group has no names.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Any]],
        base_optimizer: Callable[..., Optimizer],
        rho: float = 0.05,
        normalize: bool = True,
        eta: float = 0.0,
        weights_only: bool = False,
        **base_kwargs: Any,
    ) -> None:
        self.eta = check_nonnegative("eta", eta)
        self.weights_only = check_bool("weights_only", weights_only)
        super().__init__(
            params, base_optimizer, rho=rho, adaptive=True, normalize=normalize, **base_kwargs
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; with ``weights_only`` it must name its parameters."""
        super().add_param_group(param_group)
        if self.weights_only and "param_names" not in self.param_groups[-1]:
            raise ValueError(
                "weights_only=True tells weights from biases by parameter name: build ASAM from "
                "model.named_parameters() (or groups of (name, parameter) pairs)"
            )

    def _scaling(
        self, group: dict[str, Any], params: list[torch.Tensor]
    ) -> list[torch.Tensor | None] | None:
        if not group["adaptive"]:
            return None
        if self.weights_only:
            names = dict(zip(map(id, group["params"]), group["param_names"]))
            scaled = ["weight" in names[id(p)] for p in params]
        else:
            scaled = [True] * len(params)
        chosen = [p for p, keep in zip(params, scaled) if keep]
        scales = list(torch._foreach_abs(chosen)) if chosen else []
        if self.eta and scales:
            torch._foreach_add_(scales, self.eta)
        remaining = iter(scales)
        return [next(remaining) if keep else None for keep in scaled]
