"""The optimizers a run can use, built by name, and the one training step that drives each kind.

=========  ==========================================================================
name       optimizer
=========  ==========================================================================
sgd        ``torch.optim.SGD``
sam        SAM over SGD, e = rho g / ||g|| (Foret et al., ICLR 2021)
usam       unnormalized SAM over SGD, e = rho g (Andriushchenko & Flammarion, ICML 2022)
asam       adaptive SAM over SGD, e = rho |w|^2 g / || |w| g || (Kwon et al., ICML 2021)
ire        IRE over SGD (Wang et al., NeurIPS 2024)
sam-ire    IRE over SAM (the paper's SAM-IRE)
adamw      ``torch.optim.AdamW``
admire     IRE over AdamW (the paper's AdmIRE)
=========  ==========================================================================

IRE needs a diagonal curvature estimate every ``refresh_every`` steps; :func:`training_step`
computes it with :func:`samhess.curvature.fisher_diagonal` on the step's own batch (the
sampled-label Fisher, drawing labels from a generator the run checkpoints) and hands it to
``IRE.update_mask``. SAM's second forward pass runs under ``disable_running_stats`` so
BatchNorm statistics are updated once per step, from the unperturbed weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from samhess._validation import check_choice
from samhess.experiments.config import OPTIMIZER_NAMES

_SAM_KINDS = {"sam": {}, "usam": {"normalize": False}, "asam": {"adaptive": True},
              "sam-ire": {}}
_IRE_KINDS = {"ire", "sam-ire", "admire"}
_ADAM_KINDS = {"adamw", "admire"}


def build_optimizer(name: str, model: nn.Module,
                    hparams: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``model``'s trainable parameters.

    Args:
        name: one of :data:`samhess.experiments.config.OPTIMIZER_NAMES`.
        model: the model whose trainable parameters are optimized.
        hparams: ``lr``, ``momentum``, ``weight_decay``, ``rho``, ``kappa``, ``gamma``,
            ``refresh_every``, ``start_step`` (a :class:`RunConfig`'s ``to_dict()`` will do;
            keys a kind does not use are ignored).

    Returns:
        The optimizer. For IRE kinds, the ``samhess.optim.IRE`` wrapping the base optimizer.
    """
    from samhess.optim import IRE, SAM

    check_choice("optimizer", name, OPTIMIZER_NAMES)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    lr = float(hparams["lr"])
    weight_decay = float(hparams.get("weight_decay", 0.0))
    if name in _ADAM_KINDS:
        base = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif name in _SAM_KINDS:
        base = SAM(params, torch.optim.SGD, rho=float(hparams["rho"]), lr=lr,
                   momentum=float(hparams.get("momentum", 0.0)), weight_decay=weight_decay,
                   **_SAM_KINDS[name])
    else:
        base = torch.optim.SGD(params, lr=lr, momentum=float(hparams.get("momentum", 0.0)),
                               weight_decay=weight_decay)
    if name not in _IRE_KINDS:
        return base
    return IRE(base, kappa=float(hparams["kappa"]), gamma=float(hparams["gamma"]),
               refresh_every=int(hparams.get("refresh_every", 10)),
               start_step=int(hparams.get("start_step", 0)))


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters an optimizer updates, in its param-group order (IRE's mask order)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def is_two_pass(optimizer: Any) -> bool:
    """Whether a step takes SAM's two forward-backward passes (SAM itself, or IRE over SAM)."""
    from samhess.optim import IRE, SAM

    if isinstance(optimizer, IRE):
        optimizer = optimizer.optimizer
    return isinstance(optimizer, SAM)


def refresh_ire_mask(optimizer: Any, model: nn.Module, loss_fn: Callable, batch: tuple,
                     generator: torch.Generator | None) -> bool:
    """Give an IRE optimizer a new Fisher-diagonal estimate when it asks for one.

    Under ``torch.distributed`` each rank estimates on its shard of ``batch`` and the estimates
    are averaged over the ranks, weighted by shard sizes
    (:class:`samhess.distributed.ShardedData`), so every rank selects the same mask. Each rank
    then draws its sampled labels from its own generator, seeded from one draw of ``generator``:
    that draw keeps ``generator`` in the same state on every rank, which is what lets rank 0's
    checkpoint restore all of them.

    Args:
        model: the unwrapped model (not its DistributedDataParallel wrapper).
        batch: the global batch.

    Returns:
        Whether the mask was refreshed.
    """
    from samhess.optim import IRE

    if not isinstance(optimizer, IRE) or not optimizer.needs_refresh():
        return False
    from samhess.curvature import fisher_diagonal
    from samhess.distributed import ShardedData, get_rank, get_world_size, shard_batch

    data: Any = batch
    if get_world_size() > 1:
        shard = shard_batch(*batch)
        data = ShardedData((shard.inputs, shard.targets))
        if generator is not None:
            generator = _rank_generator(generator, get_rank())
    diag = fisher_diagonal(model, loss_fn, data, params=optimizer_parameters(optimizer),
                           generator=generator)
    optimizer.update_mask(diag)
    return True


def _rank_generator(shared: torch.Generator, rank: int) -> torch.Generator:
    """A generator for this rank, seeded by one draw from ``shared`` and the rank."""
    import numpy as np

    draw = int(torch.randint(0, 2**62, (1,), generator=shared, device=shared.device))
    seed = int(np.random.SeedSequence([draw, rank]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=shared.device).manual_seed(seed % 2**63)


def training_step(optimizer: Any, model: nn.Module, loss_fn: Callable, batch: tuple,
                  *, generator: torch.Generator | None = None,
                  train_model: nn.Module | None = None, per_replica: bool = False) -> float:
    """One optimizer step on ``batch`` for any optimizer :func:`build_optimizer` makes.

    SGD/AdamW: one forward-backward pass and ``step()``. SAM kinds: the gradient at w,
    ``first_step`` to w + e, the gradient at w + e with BatchNorm statistics frozen,
    ``second_step`` (:func:`samhess.distributed.sam_step`). IRE kinds: the mask refresh first
    (when due), then the base kind's step.

    Under ``torch.distributed``, ``batch`` is the global batch: each rank takes its contiguous
    shard, its loss is scaled so that DistributedDataParallel's gradient average is the global
    batch's gradient, and the returned loss is the global batch's.

    Args:
        optimizer: from :func:`build_optimizer`.
        model: the model in train mode.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss.
        batch: ``(inputs, targets)``.
        generator: the source of the sampled labels of IRE's Fisher estimate.
        train_model: what the training passes run through: ``model``'s DistributedDataParallel
            wrapper under torch.distributed (default ``model``).
        per_replica: SAM's ascent from each rank's own shard (first pass inside ``no_sync``)
            instead of the global gradient.

    Returns:
        The loss at w (before the step), as a float.
    """
    from samhess.distributed import get_world_size, sam_step, shard_batch, weighted_mean_over_ranks

    train_model = model if train_model is None else train_model
    refresh_ire_mask(optimizer, model, loss_fn, batch, generator)
    shard = shard_batch(*batch)
    if is_two_pass(optimizer):
        loss = sam_step(train_model, optimizer, loss_fn, shard.inputs, shard.targets,
                        per_replica=per_replica, loss_scale=shard.loss_scale)
    else:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(train_model(shard.inputs), shard.targets)
        (loss if shard.loss_scale == 1.0 else loss * shard.loss_scale).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if get_world_size() > 1:
        loss = weighted_mean_over_ranks(loss.detach(), shard.size)
    return float(loss.detach())
