"""Gradients, perturbed evaluations and optimizer steps that leave the training state untouched.

Every analysis function measures the model at its current weights :math:`w`, at perturbed
weights :math:`w + e`, or after one optimizer step from :math:`w`; this module does those
evaluations and puts back exactly what they change: parameter values, buffers, gradients, the
optimizer's state (momentum buffers, Adam moments, step counts, IRE's step count), the model's
train/eval mode and the torch random number generators.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from samhess.curvature.attention import math_attention
from samhess.curvature.batches import call_model, check_batch, micro_batch
from samhess.curvature.operators import evaluation_mode, resolve_parameters
from samhess.curvature.vectors import flatten, unflatten

Batch = tuple[Any, Any]


__all__ = [
    "check_batch",
    "as_data",
    "evaluation_mode",
    "resolve_parameters",
    "loss_and_gradient",
    "perturbed",
    "optimizer_chain",
    "describe_optimizer",
    "optimizer_parameters",
    "learning_rates",
    "TrainingStateSnapshot",
    "preserved_training_state",
    "measure_step",
]


def as_data(batch: Batch) -> list[Batch]:
    """``batch`` as the operators' ``data``: a list of one batch, which reads as one batch whatever
    its inputs and targets are (a pair of pairs alone would read as two batches)."""
    return [batch]


def loss_and_gradient(
    model: nn.Module, loss_fn: Callable, batch: Batch, params: Sequence[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """:math:`L(w)` and the flat gradient :math:`\\nabla L(w)` of the mean batch loss.

    Uses ``torch.autograd.grad``, so the parameters' ``.grad`` fields are left alone. Attention
    runs on the math kernel, as in the curvature operators, so gradients and Hessian-vector
    products describe the same function.
    """
    inputs, targets = batch
    with torch.enable_grad(), math_attention():
        loss = loss_fn(call_model(model, inputs), targets)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True, materialize_grads=True)
    return float(loss.detach()), flatten(grads)


@contextlib.contextmanager
def perturbed(params: Sequence[torch.Tensor], delta: torch.Tensor) -> Iterator[None]:
    """Move ``params`` to :math:`w + \\delta` for the block, then copy back the saved :math:`w`.

    Restoring from a saved copy (rather than subtracting :math:`\\delta`) makes the weights
    bit-identical afterwards.
    """
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, unflatten(delta.to(dtype=saved[0].dtype), params)):
            p.add_(d.to(dtype=p.dtype, device=p.device))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)


def optimizer_chain(optimizer: Any) -> list[Any]:
    """The optimizer and every optimizer it wraps (IRE -> inner, SAM -> base)."""
    chain, current = [], optimizer
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = getattr(current, "optimizer", None) or getattr(current, "base_optimizer", None)
    return chain


def describe_optimizer(optimizer: Any) -> str:
    """A short name from the class names of the wrapping chain, e.g. ``"IRE(SAM(SGD))"``."""
    names = [type(o).__name__ for o in optimizer_chain(optimizer)]
    return "".join(f"{name}(" for name in names[:-1]) + names[-1] + ")" * (len(names) - 1)


def optimizer_parameters(optimizer: Any) -> list[torch.Tensor]:
    """Every parameter of every group of ``optimizer``, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def learning_rates(optimizer: Any, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """A flat vector holding, for each coordinate of ``params``, its group's learning rate."""
    rate_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rate_of[id(p)] = float(group["lr"])
    missing = [i for i, p in enumerate(params) if id(p) not in rate_of]
    if missing:
        raise ValueError(
            f"params[{missing[0]}] is not among the optimizer's parameters; pass the parameters "
            "the optimizer steps"
        )
    return torch.cat(
        [torch.full((p.numel(),), rate_of[id(p)], dtype=p.dtype, device=p.device) for p in params]
    )


_SCALAR_TYPES = (type(None), bool, int, float, str, torch.Tensor)


def _copy_value(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


class _OptimizerSnapshot:
    """The per-parameter state, group settings and plain attributes of one optimizer."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.state = {
            p: {k: _copy_value(v) for k, v in entry.items()} for p, entry in optimizer.state.items()
        }
        self.groups = [
            {k: _copy_value(v) for k, v in group.items() if k != "params"}
            for group in optimizer.param_groups
        ]
        self.attributes = {k: v for k, v in vars(optimizer).items() if isinstance(v, _SCALAR_TYPES)}
        # the random draws of RST's switch and BSAM's noise: a measured step must not advance them
        self.generators = {k: v.get_state() for k, v in vars(optimizer).items()
                           if isinstance(v, torch.Generator)}

    @torch.no_grad()
    def restore(self) -> None:
        live = self.optimizer.state
        for p in [p for p in live if p not in self.state]:
            del live[p]
        for p, saved in self.state.items():
            entry = live[p]
            for key in [k for k in entry if k not in saved]:
                del entry[key]
            for key, value in saved.items():
                current = entry.get(key)
                if (
                    isinstance(value, torch.Tensor)
                    and isinstance(current, torch.Tensor)
                    and current.shape == value.shape
                    and current.dtype == value.dtype
                    and current.device == value.device
                ):
                    current.copy_(value)
                else:
                    entry[key] = _copy_value(value)
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            for key, value in saved.items():
                group[key] = _copy_value(value)
        for name, value in self.attributes.items():
            setattr(self.optimizer, name, value)
        for name, generator_state in self.generators.items():
            getattr(self.optimizer, name).set_state(generator_state)


class TrainingStateSnapshot:
    """A copy of everything one optimizer step changes, and the means to put it back.

    Captured: the values of the model's parameters and buffers and of the optimizers'
    parameters and their ``.grad`` (or its absence); for every optimizer in each wrapping chain
    (IRE -> inner optimizer, SAM -> base optimizer) its per-parameter ``state`` (momentum
    buffers, Adam moments and step counts), its group settings and its plain attributes (IRE's
    step count, SAM's ``last_grad_norm``); and the train/eval mode of every module. Everything is
    put back in place, so tensors, state dictionaries and ``param_groups`` keep their identity
    (a learning-rate scheduler or a wrapping optimizer holding them sees no change). IRE's mask
    and diagonal estimate are not touched by a step and stay as they are.
    """

    def __init__(self, model: nn.Module, optimizers: Sequence[Any]) -> None:
        tensors: dict[int, torch.Tensor] = {}
        for t in list(model.parameters()) + list(model.buffers()):
            tensors[id(t)] = t
        chains = [o for optimizer in optimizers for o in optimizer_chain(optimizer)]
        unique_chain: dict[int, Any] = {id(o): o for o in chains}
        for optimizer in unique_chain.values():
            for p in optimizer_parameters(optimizer):
                tensors[id(p)] = p
        self.tensors = list(tensors.values())
        self.values = [t.detach().clone() for t in self.tensors]
        self.grads = [None if t.grad is None else t.grad.detach().clone() for t in self.tensors]
        self.optimizers = [_OptimizerSnapshot(o) for o in unique_chain.values()]
        self.training = [(m, m.training) for m in model.modules()]

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every captured value, in place."""
        for t, value, grad in zip(self.tensors, self.values, self.grads):
            t.copy_(value)
            if grad is None:
                t.grad = None
            elif t.grad is None or t.grad.shape != grad.shape or t.grad.dtype != grad.dtype:
                t.grad = grad.clone()
            else:
                t.grad.copy_(grad)
        for snapshot in self.optimizers:
            snapshot.restore()
        for module, training in self.training:
            module.training = training


@contextlib.contextmanager
def preserved_training_state(model: nn.Module, optimizers: Sequence[Any]) -> Iterator[None]:
    """Run the block and then restore the model, the optimizers and the torch RNGs exactly."""
    snapshot = TrainingStateSnapshot(model, optimizers)
    devices = sorted({t.device.index or 0 for t in snapshot.tensors if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        snapshot.restore()


def micro_batch_count(optimizer: Any) -> int:
    """The ``micro_batches`` an optimizer in the wrapping chain declares (1 if none does)."""
    for member in optimizer_chain(optimizer):
        count = getattr(member, "micro_batches", None)
        if isinstance(count, int):
            return count
    return 1


def measure_step(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    optimizer: Any,
    params: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The flat step :math:`D = w_\\text{after} - w_\\text{before}` of one ``optimizer.step``.

    The contract that lets any ``torch.optim.Optimizer`` be measured, samhess's or another
    library's:

    * the gradient at :math:`w` of the batch is in every stepped parameter's ``.grad`` before
      ``step`` is called (an optimizer whose ``step(closure)`` starts from the gradient already
      present, as many SAM implementations do, would otherwise use none, or a stale one);
    * the step is taken through a closure (zero the gradients, forward, backward, return the
      loss), which plain torch optimizers call once and SAM-type optimizers twice or more;
    * the closure enables autograd itself, so an optimizer may call it under ``torch.no_grad``;
    * an optimizer that perturbs per micro-batch declares ``micro_batches`` and calls
      ``closure(i)``: micro-batch ``i`` of that many equal contiguous parts
      (:func:`samhess.curvature.batches.micro_batch`); ``closure()`` is the whole batch;
    * the model runs with attention on the math kernel, like every other evaluation of the
      analysis, so that the step and the Hessian-vector products describe one function.

    The caller restores the state.
    """
    inputs, targets = batch
    stepped = optimizer_parameters(optimizer)

    count = micro_batch_count(optimizer)

    def closure(index: int | None = None) -> torch.Tensor:
        part_inputs, part_targets = (inputs, targets) if index is None else micro_batch(
            (inputs, targets), index, count)
        with torch.enable_grad():
            for p in stepped:
                p.grad = None
            with math_attention():
                loss = loss_fn(call_model(model, part_inputs), part_targets)
            loss.backward()
        return loss

    closure()
    before = flatten(params)
    optimizer.step(closure)
    return flatten(params) - before
