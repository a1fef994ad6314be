"""The distributed side of tests/distributed: run under ``torchrun --nproc-per-node 2``.

Every rank trains or measures with the code under test and saves what it saw to
``OUT/rank-<r>.pt``; the tests compare those files with single-process answers computed in the
test process from the same problem definitions (the functions below, imported there too).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

STEPS = 10
LR, MOMENTUM, RHO = 0.1, 0.9, 0.05
# global batch sizes, cycled: 16 splits 8 + 8, 15 splits 8 + 7 (the loss scale matters)
BATCH_SIZES = (16, 15)
IRE_KAPPA, IRE_GAMMA, IRE_REFRESH = 1.0, 0.5, 3


def build_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A small MLP without BatchNorm, identically initialized wherever it is built."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def global_batches(dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batch of every step, the same on every rank and in the test process."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for step in range(STEPS):
        size = BATCH_SIZES[step % len(BATCH_SIZES)]
        inputs = torch.randn(size, 6, generator=generator, dtype=torch.float64).to(dtype)
        batches.append((inputs, torch.randint(0, 3, (size,), generator=generator)))
    return batches


def squared_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    """A per-rank diagonal estimate for IRE: the squared gradient of the shard's mean loss."""
    loss = nn.functional.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return [g.detach() ** 2 for g in grads]


def _parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def train_sam(per_replica: bool) -> dict:
    from samhess.distributed import shard_batch, sam_step, weighted_mean_over_ranks
    from samhess.optim import SAM

    model = nn.parallel.DistributedDataParallel(build_model())
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    losses = []
    for inputs, targets in global_batches():
        shard = shard_batch(inputs, targets)
        loss = sam_step(model, optimizer, nn.functional.cross_entropy, shard.inputs,
                        shard.targets, per_replica=per_replica, loss_scale=shard.loss_scale)
        losses.append(float(weighted_mean_over_ranks(loss, shard.size)))
    return {"parameters": _parameters(model.module), "losses": losses}


def train_ire() -> dict:
    from samhess.distributed import shard_batch, sam_step, weighted_mean_over_ranks
    from samhess.optim import IRE, SAM, flattest_coordinates_mask

    model = nn.parallel.DistributedDataParallel(build_model())
    optimizer = IRE(SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR),
                    kappa=IRE_KAPPA, gamma=IRE_GAMMA, refresh_every=IRE_REFRESH)
    masks, local_masks, local_estimates, estimates, sizes = [], [], [], [], []
    for inputs, targets in global_batches():
        shard = shard_batch(inputs, targets)
        if optimizer.needs_refresh():
            # curvature goes through the wrapped module: DDP's hooks only serve training passes
            local = squared_gradient(model.module, shard.inputs, shard.targets)
            estimate = weighted_mean_over_ranks(local, shard.size)
            optimizer.update_mask(estimate)
            masks.append([m.clone() for m in optimizer.mask])
            local_masks.append(flattest_coordinates_mask(local, IRE_GAMMA))
            local_estimates.append(local)
            estimates.append(estimate)
            sizes.append(shard.size)
        sam_step(model, optimizer, nn.functional.cross_entropy, shard.inputs, shard.targets,
                 loss_scale=shard.loss_scale)
    return {"parameters": _parameters(model.module), "masks": masks, "local_masks": local_masks,
            "local_estimates": local_estimates, "estimates": estimates, "sizes": sizes}


def run_loop_steps(name: str) -> dict:
    """Steps of ``samhess run``'s own loop (``training_step``) over DDP on the global batches."""
    from samhess.experiments.optimizer_kinds import build_optimizer, optimizer_kind
    from samhess.experiments.training_step import StepContext, training_step

    model = build_model()
    wrapped = nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(name, model, {
        "lr": LR, "momentum": MOMENTUM, "rho": RHO, "kappa": IRE_KAPPA, "gamma": IRE_GAMMA,
        "refresh_every": IRE_REFRESH})
    generator = torch.Generator().manual_seed(7)
    context = StepContext(kind=optimizer_kind(name), optimizer=optimizer, model=model,
                          loss_fn=nn.functional.cross_entropy, train_model=wrapped,
                          label_generator=generator)
    losses, masks = [], []
    for batch in global_batches():
        refreshing = bool(getattr(optimizer, "needs_refresh", lambda: False)())
        losses.append(training_step(context, batch))
        if refreshing:
            masks.append([m.clone() for m in optimizer.mask])
    return {"parameters": _parameters(model), "losses": losses, "masks": masks,
            "generator_state": generator.get_state()}


def main_process_decisions() -> dict:
    from samhess.distributed import get_rank, on_main_process

    def rank_here() -> int:
        return get_rank()

    def refuse() -> None:
        raise ValueError(f"refused on rank {get_rank()}")

    try:
        on_main_process(refuse)
        error = None
    except ValueError as exc:
        error = str(exc)
    return {"value": on_main_process(rank_here), "error": error}


def main(out: Path) -> None:
    from samhess.distributed import distributed_session, get_rank, get_world_size

    with distributed_session() as active:
        assert active and get_world_size() == 2, "run me with torchrun --nproc-per-node 2"
        results = {
            "world_size": get_world_size(),
            "sam_global": train_sam(per_replica=False),
            "sam_per_replica": train_sam(per_replica=True),
            "ire": train_ire(),
            "on_main_process": main_process_decisions(),
            "run_loop_sgd": run_loop_steps("sgd"),
            "run_loop_sam_ire": run_loop_steps("sam-ire"),
        }
        torch.save(results, out / f"rank-{get_rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
