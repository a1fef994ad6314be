"""What the framework integrations share: which optimizers take two passes, and IRE's mask.

A *two-pass* optimizer is a :class:`~samhess.optim.SAM` (USAM, ASAM) or an
:class:`~samhess.optim.IRE` over one (SAM-IRE): its step needs the gradient at :math:`w`, a
``first_step`` to :math:`w + e`, the gradient there, and a ``second_step``. An IRE over a plain
optimizer (IRE, AdmIRE) steps like any torch optimizer but needs its mask refreshed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.optim import Optimizer

from samhess.optim import IRE, SAM


def is_two_pass(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` is a SAM, or an IRE over a SAM."""
    return isinstance(optimizer, SAM) or (
        isinstance(optimizer, IRE) and isinstance(optimizer.optimizer, SAM)
    )


def scaled_optimizer(optimizer: Optimizer) -> Optimizer:
    """The optimizer a ``GradScaler`` sees when ``optimizer.second_step(grad_scaler=...)`` runs.

    An IRE hands the scaler to its inner SAM, so gradients must be unscaled on that one.
    """
    return optimizer.optimizer if isinstance(optimizer, IRE) else optimizer


def refresh_mask(
    optimizer: Optimizer, diagonal: Callable[[], Sequence[torch.Tensor]]
) -> None:
    """Give an IRE the new diagonal estimate ``diagonal()`` when it asks for one."""
    if isinstance(optimizer, IRE) and optimizer.needs_refresh():
        optimizer.update_mask(diagonal())
