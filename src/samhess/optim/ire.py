r"""Implicit Regularization Enhancement (IRE) over any optimizer, SAM included.

IRE (Wang et al., NeurIPS 2024) speeds up the optimizer along the *flat* coordinates only. With
:math:`w_{\text{old}}` the weights before a base step and :math:`w_{\text{new}}` after it,

.. math::

    D = w_{\text{new}} - w_{\text{old}}, \qquad
    w_{\text{new}} \leftarrow w_{\text{new}} + \kappa\, m \odot D,

where :math:`m \in \{0, 1\}^n` is 1 on the ``round(gamma * n)`` coordinates with the smallest
diagonal-curvature estimate (the flattest ones). Flat coordinates therefore move
:math:`1 + \kappa` times as far as the base optimizer moved them and sharp coordinates exactly as
far. For plain SGD this is :math:`w_{t+1} = w_t - \eta (I + \kappa P_t) \nabla L(w_t)` with the
projection :math:`P_t = \operatorname{diag}(m)`; over AdamW it is the paper's AdmIRE and over
:class:`~samhess.optim.SAM` its SAM-IRE.

The estimate comes from the training loop (``samhess.curvature.fisher_diagonal``, the
Gauss-Newton-Bartlett / sampled-label Fisher diagonal), which calls :meth:`IRE.update_mask`
whenever :meth:`IRE.needs_refresh` says so, i.e. every ``refresh_every`` steps, with an estimate
on :meth:`IRE.refresh_batch` of the step's batch: its leading quarter by default
(``refresh_fraction``). An estimate costs about one forward-backward pass over the examples it
sees, so on a quarter of the batch every 10 steps IRE adds about 2.5% to a step instead of 10%;
``benchmarks/bench_optim.py`` measures that cost and the mask quality both ways.

Reference:
    M. Wang, J. He, K. Jiang, Z. Liu, W. E, L. Wu. Improving Generalization and Convergence by
    Enhancing Implicit Regularization. NeurIPS 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from samhess._validation import (
    check_bool,
    check_half_open_unit_interval,
    check_int_at_least,
    check_nonnegative,
    check_open_unit_interval,
    check_real,
)
from samhess.optim.dtensors import full_tensor, is_dtensor, local_shard, shard_like
from samhess.optim.finite import require_finite_gradients
from samhess.optim.masks import flattest_coordinates_mask

__all__ = ["IRE"]

_HYPERPARAMETERS = (
    "kappa",
    "gamma",
    "refresh_every",
    "start_step",
    "ema",
    "ema_from_zero",
    "per_tensor",
    "kappa_follows_lr",
    "refresh_fraction",
)

#: Default share of a training batch that a mask refresh estimates the diagonal on.
REFRESH_FRACTION = 0.25


def _check_refresh_fraction(value: object) -> float:
    value = check_real("refresh_fraction", value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"refresh_fraction must lie in (0, 1], got {value!r}")
    return value


def _leading_examples(batch: Any, count: int) -> Any:
    """The first ``count`` examples of every tensor in ``batch`` (a tensor, sequence or mapping)."""
    if isinstance(batch, torch.Tensor):
        return batch[:count]
    if isinstance(batch, Mapping):
        return {key: _leading_examples(value, count) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_leading_examples(value, count) for value in batch)
    raise TypeError(
        f"batch must be a tensor, or a tuple, list or dict of tensors, got {type(batch).__name__}"
    )


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for value in batch:
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


#: Hyperparameters stored behind a validating property (set directly once validated).
_VALIDATED_PROPERTIES = frozenset({"kappa", "gamma", "refresh_every", "start_step", "ema",
                                   "refresh_fraction"})


@dataclass
class _GroupAmplification:
    """The tensors of one parameter group whose mask selects at least one coordinate."""

    params: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    snapshots: list[torch.Tensor] = field(default_factory=list)
    # lerp weights -kappa_t * mask, recomputed only when kappa_t changes
    weights: list[torch.Tensor] = field(default_factory=list)
    kappa: float | None = None


class IRE(Optimizer):
    r"""Implicit Regularization Enhancement wrapped around an optimizer instance.

    After every base step from :math:`w_{\text{old}}` to :math:`w_{\text{new}}`, IRE sets
    :math:`w_{\text{new}} \leftarrow w_{\text{new}} + \kappa_t\, m \odot (w_{\text{new}} -
    w_{\text{old}})` (Wang et al., NeurIPS 2024). The mask :math:`m` is 1 on the
    ``round(gamma * n)`` coordinates with the smallest diagonal estimate, ranked globally over
    all parameters (or within each tensor with ``per_tensor=True``); ties go to the lower flat
    index (stable sort by value, then by position in the concatenated parameter vector). With
    ``kappa_follows_lr`` the amplification follows the schedule,
    :math:`\kappa_t = \kappa\, \eta_t / \eta_0` per parameter group.

    Steps with index below ``start_step`` are plain base steps. From ``start_step`` on, the
    training loop must supply a mask: whenever :meth:`needs_refresh` is ``True`` (at
    ``start_step`` and every ``refresh_every`` steps after each refresh) it computes a diagonal
    estimate and calls :meth:`update_mask`. With ``ema > 0`` the mask ranks the exponential
    moving average :math:`\hat d \leftarrow \text{ema}\,\hat d + (1 - \text{ema})\, d` of the
    estimates, one update per refresh. The first estimate initializes it, or with
    ``ema_from_zero`` it starts from :math:`\hat d = 0` as in the official IRE code, so that after
    :math:`t` refreshes :math:`\hat d = (1 - \text{ema}) \sum_{s \le t} \text{ema}^{t - s} d_s`:
    the first estimate weighs :math:`1 - \text{ema}` times what it weighs in the default
    convention (the first refresh ranks the same either way).

    ``param_groups`` is the inner optimizer's list, so a learning-rate scheduler attached to the
    ``IRE`` object drives the inner optimizer. Over a :class:`~samhess.optim.SAM` the two-step
    API (``first_step``/``second_step``, with an optional ``grad_scaler``) and ``step(closure)``
    both work; a step that GradScaler skips is not counted and amplifies nothing.

    Args:
        optimizer: the optimizer *instance* to wrap (SGD, AdamW, SAM, ...).
        kappa: amplification :math:`\kappa \ge 0` of the flat coordinates' step.
        gamma: fraction of coordinates treated as flat, in (0, 1).
        refresh_every: steps between mask refreshes (>= 1).
        start_step: index of the first amplified step (>= 0).
        ema: averaging factor of the diagonal estimates, in [0, 1); 0 uses the latest one.
        ema_from_zero: start the average from zero instead of from the first estimate.
        per_tensor: rank coordinates within each parameter tensor instead of globally.
        kappa_follows_lr: scale :math:`\kappa` by each group's learning rate over its initial
            one (``initial_lr`` if a scheduler already set it, else ``lr`` at construction).
        refresh_fraction: share of a training batch, in (0, 1], that :meth:`refresh_batch`
            keeps for the diagonal estimate (default :data:`REFRESH_FRACTION`, a quarter).
        raise_on_nonfinite: raise :class:`~samhess.errors.DivergenceError` when a gradient the
            step uses holds inf or NaN, before any weight moves (over a SAM, the gradient at
            :math:`w + e` too, SAM returning to :math:`w`). Off by default, as in
            ``torch.optim``.

    Raises:
        ValueError: ``gamma`` selects no coordinate (``round(gamma * n) = 0``, per tensor with
            ``per_tensor``): IRE would then be its base optimizer, without a word.

    Attributes:
        optimizer: the wrapped optimizer.
        step_count: number of completed (not skipped) steps.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        kappa: float,
        gamma: float,
        refresh_every: int = 10,
        start_step: int = 0,
        ema: float = 0.0,
        per_tensor: bool = False,
        kappa_follows_lr: bool = False,
        *,
        ema_from_zero: bool = False,
        refresh_fraction: float = REFRESH_FRACTION,
        raise_on_nonfinite: bool = False,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer instance, got {optimizer!r}"
            )
        if isinstance(optimizer, IRE):
            raise TypeError("optimizer must not itself be an IRE")
        self.kappa = kappa
        self.gamma = gamma
        self.refresh_every = refresh_every
        self.start_step = start_step
        self.ema = ema
        self.ema_from_zero = check_bool("ema_from_zero", ema_from_zero)
        self.refresh_fraction = refresh_fraction
        self.per_tensor = check_bool("per_tensor", per_tensor)
        self.kappa_follows_lr = check_bool("kappa_follows_lr", kappa_follows_lr)
        self.raise_on_nonfinite = check_bool("raise_on_nonfinite", raise_on_nonfinite)
        # The inner optimizer's defaults, shared: schedulers that cycle momentum read them, and
        # add_param_group fills new groups from them.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups
        self.optimizer = optimizer
        self.step_count = 0
        self._initial_lrs = [float(g.get("initial_lr", g["lr"])) for g in self.param_groups]
        if self.kappa_follows_lr:
            for index, lr in enumerate(self._initial_lrs):
                if lr == 0.0:
                    raise ValueError(
                        f"kappa_follows_lr needs a nonzero initial learning rate, got "
                        f"param_groups[{index}]['lr'] = {lr!r}"
                    )
        self._mask: list[torch.Tensor] | None = None
        self._estimate: list[torch.Tensor] | None = None
        self._refreshed_at: int | None = None
        self._groups: list[_GroupAmplification] = []
        self._buffers: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
        self._amplify = False
        self._pending = False
        self._pending_scaler: torch.amp.GradScaler | None = None
        self._require_selection(self.gamma, self.per_tensor)

    # -- hyperparameters, validated on every assignment ----------------------------------------

    @property
    def kappa(self) -> float:
        """Amplification of the flat coordinates' step (>= 0)."""
        return self._kappa

    @kappa.setter
    def kappa(self, value: float) -> None:
        self._kappa = check_nonnegative("kappa", value)

    @property
    def gamma(self) -> float:
        """Fraction of coordinates selected as flat at the next :meth:`update_mask`."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        value = check_open_unit_interval("gamma", value)
        if "optimizer" in self.__dict__:  # after construction: the parameters are known
            self._require_selection(value, self.per_tensor)
        self._gamma = value

    def _require_selection(self, gamma: float, per_tensor: bool) -> None:
        """Refuse a ``gamma`` whose mask would select no coordinate (IRE would do nothing)."""
        sizes = [p.numel() for p in self._params()]
        selected = (sum(round(gamma * n) for n in sizes) if per_tensor
                    else round(gamma * sum(sizes)))
        if selected == 0:
            n = max(sizes) if per_tensor else sum(sizes)
            where = (f"in any parameter tensor (the largest holds n = {n})" if per_tensor
                     else f"of the n = {n} coordinates")
            raise ValueError(
                f"gamma {gamma!r} selects no coordinate {where}: round(gamma * n) = 0, so IRE "
                f"would be its base optimizer; gamma must exceed 0.5 / n = {0.5 / n:.3g}"
            )

    @property
    def refresh_every(self) -> int:
        """Steps between mask refreshes."""
        return self._refresh_every

    @refresh_every.setter
    def refresh_every(self, value: int) -> None:
        self._refresh_every = check_int_at_least("refresh_every", value, 1)

    @property
    def start_step(self) -> int:
        """Index of the first amplified step."""
        return self._start_step

    @start_step.setter
    def start_step(self, value: int) -> None:
        self._start_step = check_int_at_least("start_step", value, 0)

    @property
    def ema(self) -> float:
        """Averaging factor of the diagonal estimates."""
        return self._ema

    @ema.setter
    def ema(self, value: float) -> None:
        self._ema = check_half_open_unit_interval("ema", value)

    @property
    def refresh_fraction(self) -> float:
        """Share of a training batch that :meth:`refresh_batch` keeps."""
        return self._refresh_fraction

    @refresh_fraction.setter
    def refresh_fraction(self, value: float) -> None:
        self._refresh_fraction = _check_refresh_fraction(value)

    # -- mask -----------------------------------------------------------------------------------

    @property
    def mask(self) -> list[torch.Tensor] | None:
        """0/1 tensors shaped like the parameters (``None`` before the first update_mask).

        For parameters sharded as DTensors (FSDP2), each is this rank's shard of the mask.
        """
        return self._mask

    @property
    def estimate(self) -> list[torch.Tensor] | None:
        """The diagonal estimate the current mask ranks (the EMA with ``ema > 0``)."""
        return self._estimate

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def needs_refresh(self) -> bool:
        """Whether the loop should compute a diagonal estimate and call :meth:`update_mask` now.

        True from ``start_step`` on when no mask exists yet or ``refresh_every`` steps have
        completed since the last refresh.
        """
        if self.step_count < self.start_step:
            return False
        return self._mask is None or self.step_count - self._refreshed_at >= self.refresh_every

    def refresh_batch(self, batch: Any) -> Any:
        r"""The examples of a training ``batch`` to estimate the diagonal on for :meth:`update_mask`.

        The leading :math:`\lceil f n \rceil` of the :math:`n` examples, :math:`f` =
        ``refresh_fraction``: every tensor of ``batch`` (a tensor, or a tuple, list or dict of
        them, nested) is cut along its first dimension, which must count the examples.

        A quarter of the batch (the default) keeps the refresh's cost, about one forward-backward
        pass over the examples it sees every ``refresh_every`` steps, near 2.5% of a step
        instead of 10%. The mask barely suffers: on the digits MLP and the CNN of
        ``benchmarks/bench_optim.py`` the top Hessian eigenvectors' mass on the mask
        (:func:`samhess.analysis.ire_mask_quality`) stays within the margin that benchmark states
        of the whole-batch estimate's.

        Raises:
            TypeError: if ``batch`` holds something other than tensors, or no tensor.
        """
        first = _first_tensor(batch)
        if first is None or first.ndim == 0:
            raise TypeError(
                "batch must hold tensors whose first dimension counts the examples, got "
                f"{type(batch).__name__}"
            )
        size = first.shape[0]
        return _leading_examples(batch, max(1, math.ceil(self.refresh_fraction * size)))

    def _as_parameter_tensors(self, name: str, tensors: object) -> list[torch.Tensor]:
        params = self._params()
        if not isinstance(tensors, (list, tuple)):
            raise TypeError(
                f"{name} must be a list of tensors shaped like the parameters, "
                f"got {type(tensors).__name__}"
            )
        if len(tensors) != len(params):
            raise ValueError(
                f"{name} must hold one tensor per parameter ({len(params)}), got {len(tensors)}"
            )
        converted = []
        for index, (tensor, param) in enumerate(zip(tensors, params)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name}[{index}] must be a tensor, got {type(tensor).__name__}")
            if tensor.shape != param.shape:
                raise ValueError(
                    f"{name}[{index}] has shape {tuple(tensor.shape)} but parameter {index} has "
                    f"shape {tuple(param.shape)}"
                )
            # a DTensor (FSDP2) is gathered: the ranking is over the full parameter vector
            converted.append(full_tensor(tensor).to(device=param.device, dtype=param.dtype))
        finite = torch.stack([torch.isfinite(t).all() for t in converted]).tolist()
        if not all(finite):
            raise ValueError(f"{name}[{finite.index(False)}] holds inf or NaN values")
        return converted

    @torch.no_grad()
    def update_mask(self, diag: Sequence[torch.Tensor]) -> None:
        """Rank a new diagonal-curvature estimate and select the flat coordinates.

        Under FSDP2 (parameters sharded as DTensors), a DTensor estimate is gathered to the full
        tensor on every rank (one collective per tensor, and one full copy of the estimate per
        rank, kept for ``ema``), the ranking runs on the full vector exactly as in one process,
        and each rank keeps its shard of the mask. A plain estimate must then be the same on
        every rank.

        Args:
            diag: one tensor per parameter, shaped like it, in parameter order
                (``[p for g in optimizer.param_groups for p in g["params"]]``, which is
                ``model.parameters()`` order for an optimizer built from it).

        Raises:
            TypeError: if ``diag`` is not a list/tuple of tensors.
            ValueError: if it has the wrong length, a tensor of the wrong shape (named with its
                index and shapes) or non-finite values.
            RuntimeError: between ``first_step`` and ``second_step``.
        """
        if self._pending:
            raise RuntimeError("update_mask() between first_step() and second_step()")
        estimates = self._as_parameter_tensors("diag", diag)
        if self.ema == 0.0 or (self._estimate is None and not self.ema_from_zero):
            self._estimate = [e.clone() for e in estimates]
        else:
            if self._estimate is None:
                self._estimate = [torch.zeros_like(e) for e in estimates]
            torch._foreach_lerp_(self._estimate, estimates, 1.0 - self.ema)
        self._set_mask(flattest_coordinates_mask(self._estimate, self.gamma, self.per_tensor))
        self._refreshed_at = self.step_count

    def _set_mask(self, masks: Sequence[torch.Tensor]) -> None:
        params = self._params()
        self._mask = [shard_like(m.to(dtype=p.dtype, device=p.device), p) for m, p in zip(masks, params)]
        selected = torch.stack([m.count_nonzero().cpu() for m in self._mask]).tolist()
        by_param = dict(zip(map(id, params), zip(self._mask, selected)))
        self._groups = []
        for group in self.param_groups:
            amplification = _GroupAmplification()
            for p in group["params"]:
                mask, count = by_param[id(p)]
                if count == 0:
                    continue
                shard = local_shard(p)  # the amplification is elementwise: each rank on its shard
                snapshot, weight = self._buffers.get(p, (None, None))
                if snapshot is None or snapshot.shape != shard.shape or snapshot.dtype != shard.dtype:
                    snapshot, weight = torch.empty_like(shard), torch.empty_like(shard)
                    self._buffers[p] = (snapshot, weight)
                amplification.params.append(shard)
                amplification.masks.append(mask)
                amplification.snapshots.append(snapshot)
                amplification.weights.append(weight)
            self._groups.append(amplification)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer, which fills and validates it from its defaults.

        The new parameters have no curvature estimate yet, so the mask and the estimate are
        discarded: :meth:`needs_refresh` is ``True`` (from ``start_step`` on) and the next
        amplified step needs an :meth:`update_mask` over all parameters.

        Raises:
            RuntimeError: between ``first_step`` and ``second_step``.
        """
        if "optimizer" not in self.__dict__:
            # Optimizer.__init__ registering the inner optimizer's own groups
            super().add_param_group(param_group)
            return
        if self._pending:
            raise RuntimeError("add_param_group() between first_step() and second_step()")
        self.optimizer.add_param_group(param_group)
        self.param_groups = self.optimizer.param_groups
        group = self.param_groups[-1]
        initial_lr = float(group.get("initial_lr", group["lr"]))
        if self.kappa_follows_lr and initial_lr == 0.0:
            self.param_groups.pop()
            raise ValueError(
                "kappa_follows_lr needs a nonzero initial learning rate, got "
                f"lr = {initial_lr!r} for the new parameter group"
            )
        self._initial_lrs.append(initial_lr)
        self._mask, self._estimate, self._groups = None, None, []

    # -- stepping -------------------------------------------------------------------------------

    def current_kappa(self, group_index: int = 0) -> float:
        r"""The amplification :math:`\kappa_t` the next step applies to parameter group ``group_index``.

        Equal to ``kappa``, or with ``kappa_follows_lr`` to :math:`\kappa\, \eta_t / \eta_0` of that group.
        """
        if not self.kappa_follows_lr:
            return self.kappa
        lr = float(self.param_groups[group_index]["lr"])
        return self.kappa * lr / self._initial_lrs[group_index]

    @torch.no_grad()
    def _begin_step(self) -> None:
        active = self.step_count >= self.start_step
        if active and self._mask is None:
            raise RuntimeError(
                f"IRE reached step {self.step_count} (start_step={self.start_step}) without a "
                "mask: call update_mask(diag) whenever needs_refresh() is True"
            )
        self._amplify = active and self.kappa > 0.0
        if self._amplify:
            for amplification in self._groups:
                if amplification.params:
                    torch._foreach_copy_(amplification.snapshots, amplification.params)

    @torch.no_grad()
    def _finish_step(self, skipped: bool) -> None:
        if skipped:
            return
        if self._amplify:
            for index, amplification in enumerate(self._groups):
                if not amplification.params:
                    continue
                kappa = self.current_kappa(index)
                if kappa != amplification.kappa:
                    torch._foreach_copy_(amplification.weights, amplification.masks)
                    torch._foreach_mul_(amplification.weights, -kappa)
                    amplification.kappa = kappa
                # p + (-kappa m)(w_old - p) = w_new + kappa m (w_new - w_old), one fused pass
                torch._foreach_lerp_(
                    amplification.params, amplification.snapshots, amplification.weights
                )
        self.step_count += 1

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One base step (``optimizer.step(closure)``) followed by the amplification.

        Without a closure and with a ``first_step`` pending (SAM inner), completes that step.

        Returns:
            Whatever the inner optimizer's ``step`` returns (the loss for a closure).
        """
        if self._pending:
            if closure is not None:
                raise RuntimeError("first_step() is pending: call second_step(), not step(closure)")
            scaler, self._pending_scaler, self._pending = self._pending_scaler, None, False
            with self._inner_checks_gradients():
                self.optimizer.second_step(grad_scaler=scaler)
            self._finish_step(bool(getattr(self.optimizer, "skipped_last_step", False)))
            return None
        if self.raise_on_nonfinite:
            if closure is None:
                self._require_finite_gradients("at w")
            elif not hasattr(self.optimizer, "raise_on_nonfinite"):
                closure = self._checked_closure(closure)
        self._begin_step()
        with self._inner_checks_gradients():
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self._finish_step(False)
        return loss

    def _require_finite_gradients(self, where: str) -> None:
        require_finite_gradients(self._params(), "IRE", where)

    def _checked_closure(self, closure: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def checked(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = closure(*args, **kwargs)
            self._require_finite_gradients("of the closure")
            return loss

        return checked

    def _inner_checks_gradients(self) -> Any:
        """With ``raise_on_nonfinite``, have an inner optimizer that can (SAM) check its second
        gradient too, since only it can return the weights from w + e to w."""
        import contextlib

        inner = self.optimizer
        if not self.raise_on_nonfinite or getattr(inner, "raise_on_nonfinite", True):
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def checking():
            inner.raise_on_nonfinite = True
            try:
                yield
            finally:
                inner.raise_on_nonfinite = False

        return checking()

    def first_step(
        self, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> bool:
        """SAM inner only: remember :math:`w`, then the inner ``first_step`` (:math:`w + e`).

        Returns:
            The inner ``first_step``'s answer: whether the step needs the second pass.
        """
        if not callable(getattr(self.optimizer, "first_step", None)):
            raise TypeError(
                f"first_step() needs a SAM inner optimizer, got {type(self.optimizer).__name__}"
            )
        if self._pending:
            raise RuntimeError("first_step() called twice without second_step()")
        if self.raise_on_nonfinite and (grad_scaler is None or not grad_scaler.is_enabled()):
            self._require_finite_gradients("at w")
        self._begin_step()
        two_pass = self.optimizer.first_step(zero_grad=zero_grad, grad_scaler=grad_scaler)
        self._pending = True
        return bool(two_pass)

    def second_step(
        self, zero_grad: bool = False, grad_scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """SAM inner only: the inner ``second_step`` (optionally through ``grad_scaler``), then
        the amplification of the step it took from :math:`w`."""
        if not self._pending:
            raise RuntimeError("second_step() called without a preceding first_step()")
        self._pending_scaler = grad_scaler
        self.step()
        if zero_grad:
            self.zero_grad()

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Inner optimizer state, mask, estimate, step count, refresh step and hyperparameters.

        As with torch optimizers, the tensors are references; ``torch.save`` or deep-copy the
        dict to keep a snapshot.
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "refreshed_at": self._refreshed_at,
            "mask": None if self._mask is None else self._masks_like_parameters(),
            "estimate": None if self._estimate is None else list(self._estimate),
            "initial_lrs": list(self._initial_lrs),
            "hyperparameters": {name: getattr(self, name) for name in _HYPERPARAMETERS},
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (the inner optimizer's state included).

        All or nothing: every entry is checked first, then the inner optimizer loads its part
        (itself all or nothing for torch optimizers and SAM), and only then does IRE change.
        On any error IRE and its inner optimizer are left exactly as they were.

        Raises:
            ValueError, TypeError: a missing entry or a value that does not fit, named.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        required = ("optimizer", "step_count", "refreshed_at", "mask", "estimate",
                    "initial_lrs", "hyperparameters")
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks the IRE entries {missing}")
        loaded = self._checked_state(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.param_groups = self.optimizer.param_groups
        for name, value in loaded["hyperparameters"].items():
            setattr(self, f"_{name}" if name in _VALIDATED_PROPERTIES else name, value)
        self.step_count = loaded["step_count"]
        self._refreshed_at = loaded["refreshed_at"]
        self._initial_lrs = loaded["initial_lrs"]
        self._estimate = loaded["estimate"]
        if loaded["mask"] is None:
            self._mask, self._groups = None, []
        else:
            self._set_mask(loaded["mask"])
        self._pending, self._pending_scaler, self._amplify = False, None, False

    def _checked_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Every IRE entry of ``state_dict`` validated, changing nothing."""
        hyperparameters = state_dict["hyperparameters"]
        if not isinstance(hyperparameters, dict):
            raise TypeError("state_dict['hyperparameters'] must be a dict")
        # A checkpoint from before ema_from_zero existed averaged from the first estimate; one
        # from before refresh_fraction existed keeps the constructor's value.
        absent = [name for name in _HYPERPARAMETERS if name not in hyperparameters
                  and name not in ("ema_from_zero", "refresh_fraction")]
        if absent:
            raise ValueError(f"state_dict['hyperparameters'] lacks {absent}")
        values = {
            "kappa": check_nonnegative("kappa", hyperparameters["kappa"]),
            "gamma": check_open_unit_interval("gamma", hyperparameters["gamma"]),
            "refresh_every": check_int_at_least("refresh_every",
                                                hyperparameters["refresh_every"], 1),
            "start_step": check_int_at_least("start_step", hyperparameters["start_step"], 0),
            "ema": check_half_open_unit_interval("ema", hyperparameters["ema"]),
            "ema_from_zero": check_bool("ema_from_zero",
                                        hyperparameters.get("ema_from_zero", False)),
            "per_tensor": check_bool("per_tensor", hyperparameters["per_tensor"]),
            "kappa_follows_lr": check_bool("kappa_follows_lr", hyperparameters["kappa_follows_lr"]),
            "refresh_fraction": _check_refresh_fraction(
                hyperparameters.get("refresh_fraction", self.refresh_fraction)),
        }
        values.update({name: hyperparameters[name] for name in _HYPERPARAMETERS
                       if name not in values})
        self._require_selection(values["gamma"], values["per_tensor"])
        refreshed_at = state_dict["refreshed_at"]
        if refreshed_at is not None:
            refreshed_at = check_int_at_least("refreshed_at", refreshed_at, 0)
        initial_lrs = state_dict["initial_lrs"]
        if not isinstance(initial_lrs, (list, tuple)) or len(initial_lrs) != len(self.param_groups):
            raise ValueError(f"state_dict['initial_lrs'] must hold one learning rate per "
                             f"parameter group ({len(self.param_groups)}), got {initial_lrs!r}")
        estimate = state_dict["estimate"]
        mask = state_dict["mask"]
        return {
            "hyperparameters": values,
            "step_count": check_int_at_least("step_count", state_dict["step_count"], 0),
            "refreshed_at": refreshed_at,
            "initial_lrs": [check_real("initial_lrs", lr) for lr in initial_lrs],
            "estimate": None if estimate is None else [
                e.clone() for e in self._as_parameter_tensors("estimate", estimate)],
            "mask": None if mask is None else self._as_parameter_tensors("mask", mask),
        }

    def _masks_like_parameters(self) -> list[torch.Tensor]:
        """The mask laid out like the parameters: a DTensor from the shards for a DTensor one."""
        masks = []
        for mask, p in zip(self._mask, self._params()):
            if is_dtensor(p):
                mask = type(p).from_local(mask, p.device_mesh, p.placements, shape=p.shape,
                                          stride=p.stride())
            masks.append(mask)
        return masks

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups, which would drop the inner
        # optimizer and the mask; an instance-level ``step`` is a scheduler's patch.
        state = self.__dict__.copy()
        state.pop("step", None)
        return state

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in _HYPERPARAMETERS)
        return f"IRE({settings},\n    optimizer={self.optimizer!r})"
