r"""Parameters sharded across ranks as DTensors, as FSDP2 (``fully_shard``) holds them.

Under ``torch.distributed.fsdp.fully_shard`` every parameter and its gradient is a
``torch.distributed.tensor.DTensor``: rank :math:`r` stores only its shard :math:`w_r` of each
tensor (``Shard(0)``: a block of rows), and the full tensor exists only inside the forward and
backward passes. SAM and IRE then need three things across shards, which this module provides:

* **the global norm** :math:`\lVert g \rVert = \bigl(\sum_r \lVert g_r \rVert^2\bigr)^{1/2}`
  over the full gradient, not the rank's shard (:func:`global_norm`: DTensor's own norm, one
  reduction for all tensors);
* **elementwise updates on the shards**: the perturbation :math:`w_r + e_r`, the saved copy and
  the restore, and IRE's amplification, act on each rank's local shard (:func:`local_shard`),
  which aliases the parameter's storage, so no collective is needed;
* **a global ranking**: IRE's mask selects the flattest ``round(gamma n)`` coordinates of the
  *full* parameter vector, so the estimates are gathered (:func:`full_tensor`, one full copy of
  the estimate per rank while ranking) and each rank keeps its shard of the resulting mask
  (:func:`shard_like`).

Plain tensors pass through every function unchanged, so the optimizers have one code path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

__all__ = ["is_dtensor", "local_shard", "local_shards", "full_tensor", "shard_like", "global_norm"]


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter or gradient sharded across ranks)."""
    # A DTensor exists only once its module is imported, so a plain run never pays for the import.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_shards(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local_shard` of each tensor."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None:  # no DTensor can exist: skip the per-tensor check (called every step)
        return list(tensors)
    return [t.to_local() if isinstance(t, module.DTensor) else t for t in tensors]


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a sharded DTensor), detached."""
    return tensor.full_tensor().detach() if is_dtensor(tensor) else tensor.detach()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full`` laid out as the DTensor ``like``; ``full`` if ``like`` is plain.

    No communication: every rank holds ``full`` and cuts out its own part.
    """
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.detach(), like.device_mesh, like.placements, src_data_rank=None).to_local()


def global_norm(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The 2-norm of the concatenation of the full ``tensors``, a plain 0-dim tensor.

    Per-tensor norms with one foreach kernel, then the norm of their stack, in ``dtype`` (default:
    the tensors' common dtype, else float32). DTensors are reduced over their shards by DTensor
    itself (one reduction for all of them), plain tensors locally; a mix of both is combined.

    Args:
        tensors: non-empty; plain tensors on one device, DTensors on one device mesh.
        dtype: the dtype the norms are computed in (``torch.float64`` avoids the overflow of a
            float32 sum of squares).
    """
    module = sys.modules.get("torch.distributed.tensor")
    if module is None:
        sharded, plain = [], list(tensors)
    else:
        sharded = [t for t in tensors if isinstance(t, module.DTensor)]
        plain = [t for t in tensors if not isinstance(t, module.DTensor)]
    parts = [_norm_of_stack(group, dtype) for group in (sharded, plain) if group]
    if len(parts) == 1:
        return parts[0]
    device = parts[1].device
    return torch.linalg.vector_norm(torch.stack([p.to(device=device, dtype=parts[1].dtype) for p in parts]))


def _norm_of_stack(tensors: list[torch.Tensor], dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None:
        norms = torch._foreach_norm(tensors)
        common = norms[0].dtype if all(n.dtype == norms[0].dtype for n in norms) else torch.float32
    else:
        norms = [torch.linalg.vector_norm(t, dtype=dtype) for t in tensors]
        common = dtype
    device = norms[0].device
    if any(n.dtype != common or n.device != device for n in norms):
        norms = [n.to(device=device, dtype=common) for n in norms]
    norm = torch.linalg.vector_norm(torch.stack(norms))
    return full_tensor(norm)
