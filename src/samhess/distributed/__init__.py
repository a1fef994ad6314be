"""Data-parallel training and curvature over ``torch.distributed`` (launched with ``torchrun``).

* :mod:`~samhess.distributed.process`: joining the process group torchrun describes (gloo on
  CPU, NCCL on CUDA), ranks, world size, :func:`is_main_process`.
* :mod:`~samhess.distributed.sharding`: a global batch split contiguously across ranks, with the
  loss scale that keeps unequal shards exact.
* :mod:`~samhess.distributed.collectives`: sums and weighted means over ranks (IRE's diagonal
  estimate, logged losses), :class:`ShardedData` (data the curvature operators sum over every
  rank) and :func:`on_main_process` (a decision taken on rank 0, seen by every rank).
* :mod:`~samhess.distributed.sam`: SAM's two passes under DistributedDataParallel, with the
  global perturbation or per-replica ones (m-sharpness).

This package sits below :mod:`samhess.optim` and :mod:`samhess.curvature`: at import it needs
only torch (``sam_step`` imports ``samhess.optim`` when called). See ``docs/distributed.md``.
"""

from samhess.distributed.collectives import (
    ShardedData,
    on_main_process,
    sum_over_ranks,
    sum_over_shards,
    weighted_mean_over_ranks,
)
from samhess.distributed.process import (
    barrier,
    distributed_session,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    launched_by_torchrun,
    local_device,
    shutdown_distributed,
)
from samhess.distributed.sam import ascent_pass, sam_step
from samhess.distributed.sharding import Shard, shard_batch, shard_bounds, shard_range

__all__ = [
    "init_distributed",
    "shutdown_distributed",
    "distributed_session",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "launched_by_torchrun",
    "local_device",
    "Shard",
    "shard_bounds",
    "shard_range",
    "shard_batch",
    "sum_over_ranks",
    "weighted_mean_over_ranks",
    "ShardedData",
    "sum_over_shards",
    "on_main_process",
    "ascent_pass",
    "sam_step",
]
