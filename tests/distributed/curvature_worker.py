"""The distributed side of tests/distributed/test_distributed_curvature.py (``torchrun``, 2 ranks).

Each rank holds its contiguous share of one data set, as two batches of unequal sizes, and
computes curvature through :class:`samhess.distributed.ShardedData`; it saves the results to
``OUT/rank-<r>.pt``. The test computes the same quantities in one process on all the data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

NUM_EXAMPLES = 21  # 11 + 10 over two ranks
TOP_K, TRACE_MATVECS, SEED = 2, 30, 5


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(NUM_EXAMPLES, 5, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (NUM_EXAMPLES,), generator=generator)


def probe_vectors(dim: int) -> torch.Tensor:
    """Three fixed directions: the product with a matrix and with its first column."""
    return torch.randn(dim, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def measure(model: nn.Module, data) -> dict:
    """Everything the test compares, for ``data`` local or sharded."""
    from samhess.curvature import GGNOperator, HessianOperator, eigenpairs, spectral_density, trace

    loss_fn = nn.CrossEntropyLoss()
    hessian = HessianOperator(model, loss_fn, data)
    vectors = probe_vectors(hessian.dim)
    top = eigenpairs(hessian, k=TOP_K, seed=SEED)
    estimate = trace(hessian, num_matvecs=TRACE_MATVECS, method="hutch++", seed=SEED)
    density = spectral_density(hessian, num_probes=2, lanczos_steps=10, grid=50, seed=SEED)
    return {
        "hvp": hessian @ vectors[:, 0],
        "hvp_matrix": hessian @ vectors,
        "ggn_matrix": GGNOperator(model, loss_fn, data) @ vectors,
        "eigenvalues": top.eigenvalues,
        "eigenvectors": top.eigenvectors,
        "trace": estimate.estimate,
        "trace_stderr": estimate.stderr,
        "density": density.density,
    }


def local_batches(inputs: torch.Tensor, targets: torch.Tensor) -> list:
    """The rank's shard as two batches of unequal sizes (a loader's view of it)."""
    return [(inputs[:4], targets[:4]), (inputs[4:], targets[4:])]


def main(out: Path) -> None:
    from samhess.curvature import HessianOperator
    from samhess.distributed import (ShardedData, distributed_session, get_rank, get_world_size,
                                     shard_range)

    with distributed_session() as active:
        assert active and get_world_size() == 2, "run me with torchrun --nproc-per-node 2"
        inputs, targets = dataset()
        mine = shard_range(NUM_EXAMPLES)
        shard = inputs[mine.start:mine.stop], targets[mine.start:mine.stop]
        model = build_model()
        results = {"shard": (mine.start, mine.stop),
                   "sharded": measure(model, ShardedData(local_batches(*shard)))}
        results["local"] = {"hvp": HessianOperator(model, nn.CrossEntropyLoss(), shard)
                            @ probe_vectors(results["sharded"]["hvp"].numel())[:, 0]}
        # a rank without examples: every rank raises, none waits forever
        empty = ShardedData([] if get_rank() == 1 else [shard])
        try:
            HessianOperator(model, nn.CrossEntropyLoss(), empty) @ torch.zeros(
                results["sharded"]["hvp"].numel(), dtype=torch.float64)
        except ValueError as error:
            results["empty_error"] = str(error)
        torch.save(results, out / f"rank-{get_rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
