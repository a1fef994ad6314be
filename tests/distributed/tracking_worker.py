"""The distributed side of tests/distributed/test_distributed_tracking.py (``torchrun``, 2 ranks).

Every rank measures ``samhess run``'s record on the same global tracking batch; the curvature
products run over each rank's shard and are all-reduced (``tracking.curvature_data``). Each rank
saves what it measured, and the Hessian-vector products it computed itself, to ``OUT/rank-<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

NUM_EXAMPLES = 21  # 11 + 10 over two ranks
TOP_K, TRACE_MATVECS, SEED = 2, 12, 5


def build() -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """A float64 tanh MLP, SGD over it, and the tracking setup of a 21-example batch."""
    from samhess.experiments.tracking import TrackingSetup

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(NUM_EXAMPLES, 5, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (NUM_EXAMPLES,), generator=generator)
    batch = (inputs, targets)
    setup = TrackingSetup(loss_fn=nn.CrossEntropyLoss(), kind="classification", batch=batch,
                          train_eval=batch, test_eval=batch, top_k=TOP_K,
                          trace_matvecs=TRACE_MATVECS, seed=SEED)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), setup


def measure(model: nn.Module, optimizer: torch.optim.Optimizer, setup) -> dict:
    """The record's curvature and the per-layer curvature, on :func:`curvature_data`."""
    from samhess.experiments.layer_curvature import measure_layer_curvature
    from samhess.experiments.tracking import curvature_data, measure_curvature

    params = list(model.parameters())
    data = curvature_data(setup.batch)
    local = data.data if hasattr(data, "data") else data[0]
    return {
        "examples_per_product": int(local[0].shape[0]),
        "record": measure_curvature(model, optimizer, setup),
        "layers": measure_layer_curvature(model, setup.loss_fn, curvature_data(setup.batch),
                                          params, trace_matvecs=TRACE_MATVECS, seed=SEED),
    }


def main(out: Path) -> None:
    from samhess.distributed import distributed_session, get_rank, get_world_size

    with distributed_session() as active:
        assert active and get_world_size() == 2, "run me with torchrun --nproc-per-node 2"
        torch.save(measure(*build()), out / f"rank-{get_rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
