"""The FSDP2 side of tests/distributed/test_distributed_fsdp.py: run under ``torchrun --nproc-per-node 2``.

Every rank shards the same MLP with ``fully_shard`` (each ``Linear``, then the root), so that
parameters, gradients and optimizer state are DTensors holding a block of rows per rank, and
trains it on its shard of the global batches with SAM, USAM, ASAM, IRE over SGD and IRE over SAM.
The training loop, :func:`train`, is the one the test runs in a single process on the whole
batches; the ranks save the full parameters and masks they end with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

STEPS = 8
LR, MOMENTUM, RHO, ASAM_RHO = 0.1, 0.9, 0.05, 0.5
# global batch sizes, cycled: 16 splits 8 + 8, 15 splits 8 + 7 (the loss scale matters)
BATCH_SIZES = (16, 15)
IRE_KAPPA, IRE_GAMMA, IRE_REFRESH = 1.0, 0.5, 3
KINDS = ("sam", "usam", "asam", "ire", "sam-ire")


def build_model() -> nn.Module:
    """A float64 MLP without BatchNorm, identically initialized wherever it is built.

    Odd widths leave the two ranks unequal row blocks (5 rows: 3 + 2).
    """
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batch of every step, the same on every rank and in the test process."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for step in range(STEPS):
        size = BATCH_SIZES[step % len(BATCH_SIZES)]
        inputs = torch.randn(size, 6, generator=generator, dtype=torch.float64)
        batches.append((inputs, torch.randint(0, 3, (size,), generator=generator)))
    return batches


def build_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    from samhess.optim import ASAM, IRE, SAM, USAM

    params = list(model.parameters())
    if kind == "sam":
        return SAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    if kind == "usam":
        return USAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    if kind == "asam":
        return ASAM(params, torch.optim.SGD, rho=ASAM_RHO, lr=LR, momentum=MOMENTUM)
    if kind == "ire":
        return IRE(torch.optim.SGD(params, lr=LR, momentum=MOMENTUM), kappa=IRE_KAPPA,
                   gamma=IRE_GAMMA, refresh_every=IRE_REFRESH)
    if kind == "sam-ire":
        return IRE(SAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM),
                   kappa=IRE_KAPPA, gamma=IRE_GAMMA, refresh_every=IRE_REFRESH)
    raise ValueError(f"unknown kind {kind!r}")


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from the ranks for a DTensor), detached and copied."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().clone()


def train(kind: str, model: nn.Module) -> dict:
    """Train ``model`` with ``kind`` on this process's shards of :func:`global_batches`.

    IRE's diagonal estimate is the squared gradient of the global batch's mean loss (each rank
    backpropagates its shard's loss times the shard's loss scale; FSDP averages the shards).
    Outside a process group the shard is the whole batch.
    """
    from samhess.distributed import sam_step, shard_batch, weighted_mean_over_ranks
    from samhess.optim import IRE, SAM, flattest_coordinates_mask

    optimizer = build_optimizer(kind, model)
    two_pass = isinstance(optimizer, SAM) or isinstance(getattr(optimizer, "optimizer", None), SAM)
    loss_fn = nn.functional.cross_entropy
    losses, masks, local_rankings, local_masks = [], [], [], []
    for inputs, targets in global_batches():
        shard = shard_batch(inputs, targets)
        if isinstance(optimizer, IRE) and optimizer.needs_refresh():
            optimizer.zero_grad(set_to_none=True)
            (loss_fn(model(shard.inputs), shard.targets) * shard.loss_scale).backward()
            diag = [p.grad.detach() ** 2 for p in model.parameters()]
            optimizer.update_mask(diag)
            masks.append([full(m) for m in optimizer.state_dict()["mask"]])
            local_masks.append([m.clone() for m in optimizer.mask])
            local = [d.to_local() if hasattr(d, "to_local") else d for d in diag]
            local_rankings.append(flattest_coordinates_mask(local, IRE_GAMMA))
        if two_pass:
            loss = sam_step(model, optimizer, loss_fn, shard.inputs, shard.targets,
                            loss_scale=shard.loss_scale)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(shard.inputs), shard.targets)
            (loss * shard.loss_scale).backward()
            optimizer.step()
            loss = loss.detach()
        losses.append(float(weighted_mean_over_ranks(loss, shard.size)))
    return {"parameters": [full(p) for p in model.parameters()], "losses": losses,
            "masks": masks, "local_masks": local_masks, "local_rankings": local_rankings}


def sharded_model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = build_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def nonfinite_verdicts() -> list[bool]:
    """Whether ``raise_on_nonfinite``'s check raises on this rank: for finite gradients, then
    with one entry of rank 1's shard set to NaN (every rank must raise, or their collectives
    would part ways)."""
    from samhess.distributed import get_rank, shard_batch
    from samhess.errors import DivergenceError
    from samhess.optim.finite import require_finite_gradients

    model = sharded_model()
    inputs, targets = global_batches()[0]
    shard = shard_batch(inputs, targets)
    verdicts = []
    for poisoned in (False, True):
        model.zero_grad(set_to_none=True)
        (nn.functional.cross_entropy(model(shard.inputs), shard.targets)
         * shard.loss_scale).backward()
        if poisoned and get_rank() == 1:
            with torch.no_grad():
                next(model.parameters()).grad.to_local().view(-1)[0] = float("nan")
        try:
            require_finite_gradients(model.parameters(), "SAM", "at w")
            verdicts.append(False)
        except DivergenceError:
            verdicts.append(True)
    return verdicts


def main(out: Path) -> None:
    from samhess.distributed import distributed_session, get_rank, get_world_size

    with distributed_session() as active:
        assert active and get_world_size() == 2, "run me with torchrun --nproc-per-node 2"
        model = sharded_model()
        results = {
            "world_size": get_world_size(),
            "parameter_types": sorted({type(p).__name__ for p in model.parameters()}),
            "local_rows": [p.to_local().shape[0] for p in model.parameters()],
        }
        for kind in KINDS:
            results[kind] = train(kind, sharded_model())
        results["nonfinite_verdicts"] = nonfinite_verdicts()
        torch.save(results, out / f"rank-{get_rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
