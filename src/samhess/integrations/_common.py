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

from samhess.optim import BSAM, IRE, MSAM, SAM


def is_two_pass(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` is a SAM, or an IRE over a SAM."""
    return isinstance(optimizer, SAM) or (
        isinstance(optimizer, IRE) and isinstance(optimizer.optimizer, SAM)
    )


def check_one_step_per_batch(optimizer: Optimizer, framework: str) -> None:
    """Refuse a two-pass optimizer whose step is not one ``first_step``/``second_step`` pair
    over the framework's batch.

    :class:`~samhess.optim.MSAM` with ``m > 1`` perturbs each of ``m`` micro-batches of a batch
    separately and takes the base step after the ``m``-th ``second_step``: driven once per batch,
    it would take one base step every ``m`` framework steps, over ``m`` different batches.
    :class:`~samhess.optim.BSAM` takes its first pass at noisy weights
    (``BSAM.noisy_weights``), which the frameworks' forward pass does not enter.

    Raises:
        ValueError: naming the optimizer and the framework.
    """
    sam = optimizer.optimizer if isinstance(optimizer, IRE) else optimizer
    if isinstance(sam, MSAM) and sam.m > 1:
        raise ValueError(
            f"MSAM with m={sam.m} is not supported in {framework}: it perturbs each of m "
            "micro-batches separately and steps after the m-th; use SAM, or MSAM in a "
            "hand-written loop (docs/optim.md)"
        )
    if isinstance(sam, BSAM):
        raise ValueError(
            f"BSAM is not supported in {framework}: its first pass runs at noisy weights "
            "(BSAM.noisy_weights()); use it in a hand-written loop (docs/optim.md)"
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
