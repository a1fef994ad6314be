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

from samhess.distributed import collectives, process, sam, sharding
from samhess.distributed.collectives import *  # noqa: F403
from samhess.distributed.process import *  # noqa: F403
from samhess.distributed.sam import *  # noqa: F403
from samhess.distributed.sharding import *  # noqa: F403

__all__ = [*process.__all__, *sharding.__all__, *collectives.__all__, *sam.__all__]
