"""The finiteness check behind the optimizers' ``raise_on_nonfinite`` option."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from samhess.errors import DivergenceError

__all__ = ["require_finite_gradients"]


def require_finite_gradients(params: Iterable[torch.Tensor], optimizer: str, where: str) -> None:
    """Raise :class:`~samhess.errors.DivergenceError` if any gradient holds inf or NaN.

    One fused reduction and one host synchronization per call.

    Args:
        params: the parameters whose ``.grad`` is checked (those without one are skipped).
        optimizer: the optimizer's name, for the message.
        where: which gradient it is (``"at w"``), for the message.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    if not bool(torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all()):
        raise DivergenceError(f"{optimizer}: the gradient {where} holds inf or NaN "
                              "(raise_on_nonfinite is set)")
