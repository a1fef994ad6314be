r"""PyTorch Lightning: SAM, USAM, ASAM, IRE and SAM-IRE in automatic and manual optimization.

One SAM step is two forward-backward passes, at :math:`w` and at :math:`w + e`, around
``first_step`` and ``second_step`` (:mod:`samhess.optim.sam`). Lightning's own machinery assumes
one: in automatic optimization ``SAM.step(closure)`` runs ``training_step`` (with its
``self.log`` calls, BatchNorm updates and the ``on_before_optimizer_step`` hook) twice, and in
manual optimization the ``LightningOptimizer`` wrapper turns ``second_step`` into a second
closure step. :class:`SharpnessAwareMixin`, listed before ``LightningModule`` in a module's bases,
runs the step the way the plain two-step loop does:

* **automatic optimization** (``configure_optimizers`` returns a samhess optimizer and
  ``training_step`` returns the loss): ``training_step`` runs once at :math:`w` for every batch,
  logging and updating BatchNorm statistics as usual; the pass at :math:`w + e` calls it again with
  ``self.log`` muted and the BatchNorm running statistics frozen. With
  ``accumulate_grad_batches = k`` the perturbation comes from the gradient accumulated over the
  :math:`k` micro-batches and the pass at :math:`w + e` replays all of them: the large-batch SAM
  step. Gradient clipping (``gradient_clip_val``, either algorithm, or a
  ``configure_gradient_clipping`` override) and ``on_before_optimizer_step`` act once, on the
  gradient at :math:`w + e` that the base optimizer steps with; the perturbation uses the
  unclipped gradient at :math:`w`.
* **manual optimization**: ``self.optimizers()`` returns a :class:`SharpnessAwareOptimizer` for
  each two-pass optimizer, whose ``first_step``/``second_step`` drive the samhess optimizer and
  count one Lightning step (``trainer.global_step``) per SAM step. Between them the BatchNorm
  running statistics are frozen. ``step(closure)`` runs the closure at :math:`w` and at
  :math:`w + e`.
* **precision**: ``32-true``, ``64-true``, ``16-true``, ``bf16-true``, ``bf16-mixed`` and
  ``16-mixed``, whose ``GradScaler`` is handed to both steps (a step the scaler skips leaves
  the weights and the optimizer state as they were). Other precision plugins and strategies
  other than single-device and DDP are refused when fitting starts.
* **IRE**: the mixin refreshes the mask before the first batch of a step whenever
  ``needs_refresh()`` says so, with the estimate from :meth:`SharpnessAwareMixin.curvature_diagonal`,
  which a module trained with IRE defines.

Why a mixin: overriding ``LightningModule.optimizer_step`` is how Lightning lets a module change
how a step runs, and only the module sees the closure, the batch and ``self.log``. A callback
cannot change the step; a strategy or precision plugin would take the place of the one the user
already chose (DDP, mixed precision).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.plugins.precision import (
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch.optim import Optimizer

from samhess.integrations._common import (
    check_one_step_per_batch,
    is_two_pass,
    refresh_mask,
    scaled_optimizer,
)
from samhess.optim import IRE, disable_running_stats

__all__ = ["SharpnessAwareMixin", "SharpnessAwareOptimizer"]

_PRECISIONS = (Precision, DoublePrecision, HalfPrecision, MixedPrecision)
_STRATEGIES = (SingleDeviceStrategy, DDPStrategy)

if TYPE_CHECKING:
    _ModuleBase = pl.LightningModule
else:
    _ModuleBase = object


def _grad_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    precision = trainer.precision_plugin
    return precision.scaler if isinstance(precision, MixedPrecision) else None


def _loss_of(output: Any) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "loss" in output:
        return output["loss"]  # type: ignore[no-any-return]
    raise TypeError(
        "training_step must return the loss as a tensor, a dict with a 'loss' key or None, "
        f"got {type(output).__name__}"
    )


def _base_step(module: pl.LightningModule, optimizer: Optimizer) -> None:
    """Lightning's part of a step (hooks, clipping, GradScaler), then ``second_step``.

    What ``Precision.optimizer_step`` does around an ``optimizer.step``: unscale the gradients
    (GradScaler), call ``on_before_optimizer_step`` and clip, step, update the scale.
    """
    scaler = _grad_scaler(module.trainer)
    if scaler is not None:
        scaler.unscale_(scaled_optimizer(optimizer))
    module.trainer.precision_plugin._after_closure(module, optimizer)
    optimizer.second_step(grad_scaler=scaler)  # type: ignore[attr-defined]
    if scaler is not None:
        scaler.update()


class SharpnessAwareOptimizer:
    """What ``self.optimizers()`` returns for a two-pass optimizer in manual optimization.

    Wraps Lightning's ``LightningOptimizer`` (every other attribute is its): ``first_step`` and
    ``second_step`` act on the samhess optimizer with the trainer's ``GradScaler``, and
    ``second_step`` counts one optimizer step for Lightning (``trainer.global_step``), runs the
    ``on_before_optimizer_step`` hooks and updates the scale. Between the two steps the module's
    BatchNorm layers leave their running statistics alone.

    Example (inside ``training_step``)::

        opt = self.optimizers()
        loss = self.loss(batch)
        self.manual_backward(loss)
        opt.first_step(zero_grad=True)
        self.manual_backward(self.loss(batch))
        opt.second_step(zero_grad=True)
    """

    def __init__(self, module: SharpnessAwareMixin, lightning_optimizer: LightningOptimizer):
        self._module = module
        self._lightning_optimizer = lightning_optimizer
        self._frozen_statistics: contextlib.ExitStack | None = None

    @property
    def optimizer(self) -> Optimizer:
        """The samhess optimizer (``SAM`` or ``IRE`` over one) that ``configure_optimizers`` returned."""
        return self._lightning_optimizer.optimizer

    def first_step(self, zero_grad: bool = False) -> bool:
        """Move to :math:`w + e` (``SAM.first_step`` with the trainer's GradScaler).

        Returns:
            Whether the step needs the second pass; ``False`` on the single-pass steps of
            LookSAM and RST, which ``second_step`` completes with the gradient at :math:`w`.
        """
        self._module._check_sharpness_aware_setup()
        two_pass: bool = self.optimizer.first_step(  # type: ignore[attr-defined]
            zero_grad=zero_grad, grad_scaler=_grad_scaler(self._module.trainer)
        )
        self._frozen_statistics = contextlib.ExitStack()
        self._frozen_statistics.enter_context(disable_running_stats(self._module))
        return two_pass

    def second_step(self, zero_grad: bool = False) -> None:
        """Return to :math:`w` and take the base step with the gradient at :math:`w + e`."""
        if self._frozen_statistics is not None:
            self._frozen_statistics.close()
            self._frozen_statistics = None
        self._lightning_optimizer._on_before_step()
        _base_step(self._module, self.optimizer)
        self._lightning_optimizer._on_after_step()
        if zero_grad:
            self.optimizer.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """A whole SAM step with a closure, or ``second_step`` without one.

        Args:
            closure: zeroes the gradients, computes the loss, calls ``self.manual_backward`` and
                returns the loss; called at :math:`w` and at :math:`w + e`.

        Returns:
            What the closure returned at :math:`w`, or ``None`` without a closure.
        """
        if closure is None:
            self.second_step()
            return None
        with torch.enable_grad():
            loss = closure()
            if self.first_step(zero_grad=True):
                closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the samhess optimizer's parameters."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lightning_optimizer, name)


class SharpnessAwareMixin(_ModuleBase):
    """Mix into a ``pytorch_lightning.LightningModule`` (listed first) to train with samhess.

    ``class Classifier(SharpnessAwareMixin, pl.LightningModule)``: ``configure_optimizers``
    returns a :class:`~samhess.optim.SAM`, :class:`~samhess.optim.IRE` or SAM-IRE (alone or with
    schedulers, as usual), and both optimization modes behave as the plain two-step loop with
    ``disable_running_stats`` (see the module docstring).

    In automatic optimization :attr:`perturbed_pass` is ``True`` while ``training_step`` runs at
    :math:`w + e`; ``self.log`` records nothing then, and side effects of its own (a torchmetrics
    ``update``) can be skipped by reading it.

    A module overriding ``on_fit_start``, ``on_train_batch_start``, ``optimizer_step``,
    ``optimizers``, ``log`` or ``log_dict`` calls ``super()``'s. A missing call is detected where
    it would make a step wrong, and raises.

    Raises:
        ValueError: when fitting starts with a precision plugin, strategy or ``training_step``
            signature that the mixin cannot make correct, or with an IRE and no
            :meth:`curvature_diagonal`; the message names it.
    """

    perturbed_pass = False
    """``True`` while ``training_step`` runs again at :math:`w + e` (automatic optimization)."""

    # -- what a module trained with IRE defines ----------------------------------------------

    def curvature_diagonal(self, batch: Any) -> Sequence[torch.Tensor]:
        """A diagonal curvature estimate on ``batch`` for IRE's mask, one tensor per parameter.

        In the order of the optimizer's parameters; for example
        ``samhess.curvature.fisher_diagonal(self, loss_fn, (x, y), params)``. Called before the
        first batch of a step whenever the IRE's ``needs_refresh()`` is ``True``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} trains with IRE, which needs curvature_diagonal(batch) "
            "to return a diagonal curvature estimate (e.g. samhess.curvature.fisher_diagonal)"
        )

    # -- checks ----------------------------------------------------------------------------------

    def _check_sharpness_aware_setup(self) -> None:
        if not isinstance(self, pl.LightningModule):
            raise TypeError(
                "SharpnessAwareMixin must be combined with a pytorch_lightning.LightningModule, "
                f"and {type(self).__name__} is not one"
            )
        trainer = self.trainer
        optimizers = trainer.optimizers
        if any(is_two_pass(optimizer) for optimizer in optimizers):
            for optimizer in optimizers:
                check_one_step_per_batch(optimizer, "Lightning")
            precision, strategy = trainer.precision_plugin, trainer.strategy
            if type(precision) not in _PRECISIONS:
                raise ValueError(
                    f"precision plugin {type(precision).__name__} is not supported with a "
                    "samhess SAM optimizer; use precision 32-true, 64-true, 16-true, "
                    "bf16-true, 16-mixed or bf16-mixed"
                )
            if type(strategy) not in _STRATEGIES or _averages_models(strategy):
                raise ValueError(
                    f"strategy {type(strategy).__name__} is not supported with a samhess SAM "
                    "optimizer; use a single device or DDP"
                )
            if self.automatic_optimization and is_param_in_hook_signature(
                self.training_step, "dataloader_iter", explicit=True
            ):
                raise ValueError(
                    "training_step(dataloader_iter) is not supported with a samhess SAM "
                    "optimizer in automatic optimization: the pass at w + e replays the batches"
                )
        if any(isinstance(optimizer, IRE) for optimizer in optimizers) and (
            type(self).curvature_diagonal is SharpnessAwareMixin.curvature_diagonal
        ):
            raise ValueError(
                f"{type(self).__name__} trains with IRE but does not define "
                "curvature_diagonal(batch), the estimate that IRE's mask ranks"
            )

    # -- Lightning hooks -------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._check_sharpness_aware_setup()
        self._sharpness_aware_window = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        response = super().on_train_batch_start(batch, batch_idx)
        self._check_sharpness_aware_setup()
        if response == -1:
            return response
        for optimizer in self.trainer.optimizers:
            refresh_mask(optimizer, lambda: self.curvature_diagonal(batch))
        if self.automatic_optimization and is_two_pass(self.trainer.optimizers[0]):
            window = self._window()
            if window and window[-1][1] != batch_idx - 1:
                window.clear()  # left over from an interrupted step, epoch or fit
            window.append((batch, batch_idx))
        return response

    def _window(self) -> list[tuple[Any, int]]:
        """The batches of the accumulation window so far: the pass at w + e replays them."""
        window: list[tuple[Any, int]] = self.__dict__.setdefault("_sharpness_aware_window", [])
        return window

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        samhess_optimizer = (
            optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        )
        if not is_two_pass(samhess_optimizer):
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        self._check_sharpness_aware_setup()
        window = list(self._window())
        self._window().clear()
        if not window or window[-1][1] != batch_idx:
            raise RuntimeError(
                "SharpnessAwareMixin did not see this batch: an on_train_batch_start override "
                "must call super().on_train_batch_start(batch, batch_idx)"
            )
        if optimizer_closure is None:
            raise RuntimeError("optimizer_step needs Lightning's closure in automatic optimization")
        if optimizer_closure() is None:
            return  # training_step returned None: Lightning skips the step
        if samhess_optimizer.first_step(  # type: ignore[attr-defined]
            zero_grad=True, grad_scaler=_grad_scaler(self.trainer)
        ):  # False: a single-pass step (LookSAM, RST), taken with the gradient at w
            self._replay_at_perturbed_point(window, samhess_optimizer)
        _base_step(self, samhess_optimizer)

    def _replay_at_perturbed_point(
        self, window: list[tuple[Any, int]], optimizer: Optimizer
    ) -> None:
        trainer = self.trainer
        strategy = trainer.strategy
        with_index = is_param_in_hook_signature(self.training_step, "batch_idx", min_args=2)
        with self._perturbed():
            for position, (batch, batch_idx) in enumerate(window):
                last = position == len(window) - 1
                sync = contextlib.nullcontext() if last else _no_gradient_sync(strategy)
                with sync:
                    args = (batch, batch_idx) if with_index else (batch,)
                    loss = _loss_of(strategy.training_step(*args))
                    if loss is not None:
                        strategy.backward(loss / trainer.accumulate_grad_batches, optimizer)

    @contextlib.contextmanager
    def _perturbed(self) -> Iterator[None]:
        self.perturbed_pass = True
        try:
            with disable_running_stats(self):  # type: ignore[arg-type]
                yield
        finally:
            self.perturbed_pass = False

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        optimizers = super().optimizers(use_pl_optimizer)
        if not use_pl_optimizer or self.automatic_optimization:
            return optimizers

        def wrap(optimizer: Any) -> Any:
            if not (isinstance(optimizer, LightningOptimizer) and is_two_pass(optimizer.optimizer)):
                return optimizer
            # one wrapper per LightningOptimizer, so a first_step and its second_step meet
            wrapper = vars(optimizer).get("_samhess_wrapper")
            if wrapper is None:
                wrapper = vars(optimizer)["_samhess_wrapper"] = SharpnessAwareOptimizer(
                    self, optimizer
                )
            return wrapper

        if isinstance(optimizers, list):
            return [wrap(optimizer) for optimizer in optimizers]
        return wrap(optimizers)

    def log(self, *args: Any, **kwargs: Any) -> None:
        if not self.perturbed_pass:
            super().log(*args, **kwargs)

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        if not self.perturbed_pass:
            super().log_dict(*args, **kwargs)


def _averages_models(strategy: Strategy) -> bool:
    # DDP's post-local-SGD model averaging runs inside DDPStrategy.optimizer_step
    return getattr(strategy, "_model_averager", None) is not None


def _no_gradient_sync(strategy: Strategy) -> contextlib.AbstractContextManager[Any]:
    if isinstance(strategy, DDPStrategy):
        return strategy.block_backward_sync()
    return contextlib.nullcontext()
