"""The finiteness check behind the optimizers' ``raise_on_nonfinite`` option."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from samhess.errors import DivergenceError
from samhess.optim.dtensors import global_norm

__all__ = ["require_finite_gradients"]


def require_finite_gradients(params: Iterable[torch.Tensor], optimizer: str, where: str) -> None:
    """Raise :class:`~samhess.errors.DivergenceError` if any gradient holds inf or NaN.

    The test is the finiteness of the gradients' global norm (inf or NaN exactly when an entry
    is): one fused reduction and one host synchronization per call. Over DTensor shards (FSDP2)
    the norm is that of the full gradient (:func:`samhess.optim.dtensors.global_norm`), so every
    rank reaches the same verdict, also when only one rank's shard is not finite. A float32 sum
    of squares that overflows while every entry is finite is checked again in float64.

    Args:
        params: the parameters whose ``.grad`` is checked (those without one are skipped).
        optimizer: the optimizer's name, for the message.
        where: which gradient it is (``"at w"``), for the message.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if bool(torch.isfinite(global_norm(grads))):
        return
    if bool(torch.isfinite(global_norm(grads, dtype=torch.float64))):
        return
    raise DivergenceError(f"{optimizer}: the gradient {where} holds inf or NaN "
                          "(raise_on_nonfinite is set)")
