r"""The Hugging Face ``Trainer`` with SAM, USAM, ASAM, IRE and SAM-IRE.

The ``Trainer`` runs ``training_step`` (forward and backward) once per micro-batch, clips the
gradient and calls ``optimizer.step()`` without a closure, which a SAM step cannot be.
:class:`SharpnessAwareTrainerMixin` (and :class:`SharpnessAwareTrainer`, the mixin on
``transformers.Trainer``) turns the last micro-batch of every optimizer step into the SAM step of
the whole accumulated batch:

1. every micro-batch runs the ``Trainer``'s own ``training_step`` at :math:`w`, so the gradient
   of the whole step accumulates as usual (with its ``num_items_in_batch`` normalization, or the
   division by ``gradient_accumulation_steps``) and its loss is the one logged;
2. after the last one, ``first_step`` moves to :math:`w + e`, with :math:`e` from that
   accumulated gradient (Foret et al.'s large-batch step, not one perturbation per micro-batch);
3. every micro-batch of the step runs again at :math:`w + e`, with the same normalization and
   with BatchNorm running statistics frozen;
4. the ``Trainer`` clips (``max_grad_norm``) the gradient at :math:`w + e` and calls
   ``optimizer.step()``, which completes the pending SAM step: back to :math:`w`, base step.

An IRE's mask is refreshed before a step's first micro-batch whenever ``needs_refresh()`` says so,
from the estimate the ``curvature_diagonal`` argument returns.

``fp16=True`` (float16 with a ``GradScaler``), DeepSpeed and FSDP are refused when training starts
with a two-pass optimizer: the ``Trainer`` steps the optimizer through code that cannot undo a
perturbation when the scaler skips a step. ``bf16=True`` needs no scaler and works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import transformers
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.optim import Optimizer

from samhess.integrations._common import check_one_step_per_batch, is_two_pass, refresh_mask
from samhess.optim import IRE, disable_running_stats

__all__ = ["CurvatureDiagonal", "SharpnessAwareTrainer", "SharpnessAwareTrainerMixin"]

CurvatureDiagonal = Callable[[nn.Module, dict[str, Any]], Sequence[torch.Tensor]]
"""``(model, inputs) -> estimate``: a diagonal curvature estimate for IRE on one micro-batch,
one tensor per parameter in the optimizer's parameter order."""


if TYPE_CHECKING:
    _TrainerBase = transformers.Trainer
else:
    _TrainerBase = object


class SharpnessAwareTrainerMixin(_TrainerBase):
    """Mix into a ``transformers.Trainer`` (or a subclass) before it, to train with samhess.

    Pass the optimizer as usual, ``optimizers=(SAM(model.parameters(), torch.optim.AdamW,
    rho=0.05, lr=5e-5), None)``, or build it in an overridden ``create_optimizer``. A plain torch
    optimizer trains exactly as under the ``Trainer`` alone. See the module docstring for how a
    step runs.

    Args:
        *args: the ``Trainer``'s positional arguments.
        curvature_diagonal: ``(model, inputs) -> estimate``, required with an IRE: a diagonal
            curvature estimate on the micro-batch ``inputs`` (the dict the model receives),
            one tensor per parameter in the optimizer's parameter order.
        **kwargs: the ``Trainer``'s keyword arguments.

    Raises:
        ValueError: when training starts with a two-pass optimizer and ``fp16``, DeepSpeed or
            FSDP, or with an IRE and no ``curvature_diagonal``; the message names it.
    """

    def __init__(
        self, *args: Any, curvature_diagonal: CurvatureDiagonal | None = None, **kwargs: Any
    ) -> None:
        self.curvature_diagonal = curvature_diagonal
        self._replay: list[tuple[dict[str, Any], torch.Tensor | int | None]] = []
        super().__init__(*args, **kwargs)

    def _samhess_optimizer(self) -> Optimizer:
        optimizer: Optimizer = self.optimizer
        if isinstance(optimizer, AcceleratedOptimizer):
            return optimizer.optimizer  # type: ignore[no-any-return]
        return optimizer

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Optimizer:
        optimizer: Optimizer = super().create_optimizer(*args, **kwargs)
        if is_two_pass(optimizer):
            check_one_step_per_batch(optimizer, type(self).__name__)
            refused = [
                name
                for name, on in (
                    ("fp16=True", self.args.fp16),
                    ("DeepSpeed", self.is_deepspeed_enabled),
                    ("FSDP", self.is_fsdp_enabled),
                )
                if on
            ]
            if refused:
                raise ValueError(
                    f"{refused[0]} is not supported with a samhess SAM optimizer in "
                    f"{type(self).__name__}; use fp32 or bf16=True on one device or DDP"
                )
        if isinstance(optimizer, IRE) and self.curvature_diagonal is None:
            raise ValueError(
                f"{type(self).__name__} trains with IRE but has no curvature_diagonal, the "
                "estimate that IRE's mask ranks: pass curvature_diagonal=(model, inputs) -> list"
            )
        return optimizer

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        optimizer = self._samhess_optimizer()
        if self.curvature_diagonal is not None and not self._replay:
            diagonal = self.curvature_diagonal
            refresh_mask(optimizer, lambda: diagonal(model, inputs))
        train_step = super().training_step
        loss: torch.Tensor = train_step(model, inputs, num_items_in_batch)
        if not is_two_pass(optimizer):
            return loss
        self._replay.append((inputs, num_items_in_batch))
        if not self.accelerator.sync_gradients:
            return loss
        replay, self._replay = self._replay, []
        if not optimizer.first_step(zero_grad=True):
            return loss  # a single-pass step (LookSAM, RST), taken with the gradient at w
        with disable_running_stats(model):
            for position, (micro_batch, items) in enumerate(replay):
                last = position == len(replay) - 1
                sync = (
                    contextlib.nullcontext()
                    if last
                    else self.accelerator.no_sync(model)
                )
                with sync:
                    train_step(model, micro_batch, items)
        return loss


class SharpnessAwareTrainer(SharpnessAwareTrainerMixin, transformers.Trainer):
    """``transformers.Trainer`` with :class:`SharpnessAwareTrainerMixin`.

    Example::

        trainer = SharpnessAwareTrainer(
            model=model, args=TrainingArguments(output_dir="out", gradient_accumulation_steps=4),
            train_dataset=dataset,
            optimizers=(SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=5e-5), None),
        )
        trainer.train()
    """
