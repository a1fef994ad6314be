"""The number of torch threads a command computes with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` intra-op threads inside the block (``None``: leave torch's setting).

    The default models are small enough that thread start-up and synchronization cost more
    than they save, and on a busy machine extra threads wait on each other; one thread also
    makes the numbers independent of the machine's core count.
    """
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
