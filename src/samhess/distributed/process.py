"""The process group of a run launched by ``torchrun``, and where each process stands in it.

``torchrun`` starts one process per device and describes the job in environment variables:
``RANK`` (this process among all), ``LOCAL_RANK`` (among the processes of this node),
``WORLD_SIZE`` (all processes), ``MASTER_ADDR`` and ``MASTER_PORT`` (the rendezvous).
:func:`init_distributed` joins the group those variables describe, with the ``gloo`` backend on
CPU and ``nccl`` on CUDA. Every query below also works in a plain single process, where it
answers rank 0 of a world of 1, so the same code runs with and without ``torchrun``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

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
]

_BACKENDS = ("gloo", "nccl")


def _environment_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {raw!r}")
    return value


def launched_by_torchrun() -> bool:
    """Whether the environment describes a job of more than one process (``WORLD_SIZE`` > 1)."""
    return _environment_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    """Whether this process belongs to an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (the default group), 0 outside a process group."""
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: dist.ProcessGroup | None = None) -> int:
    """The number of processes in ``group`` (the default group), 1 outside a process group."""
    return dist.get_world_size(group) if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true outside a process group): the one that writes
    files and prints."""
    return get_rank() == 0


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait until every process of ``group`` reaches this point (nothing outside a group)."""
    if is_distributed():
        dist.barrier(group)


def local_device(backend: str | None = None) -> torch.device:
    """The device this process computes on: ``cuda:LOCAL_RANK`` with NCCL, else the CPU."""
    backend = backend or (dist.get_backend() if is_distributed() else _default_backend())
    if backend == "nccl":
        return torch.device("cuda", _environment_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(
    backend: str | None = None, *, timeout: datetime.timedelta | None = None
) -> bool:
    """Join the process group that ``torchrun``'s environment variables describe.

    Does nothing (and returns ``False``) when ``WORLD_SIZE`` is unset or 1, so a script calls it
    unconditionally. With NCCL, the process first selects GPU ``LOCAL_RANK``, the usual one
    process per GPU layout. Calling it again in an initialized process returns ``True``.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL where CUDA is available, else gloo.
        timeout: how long a collective may wait for the other ranks before failing (torch's
            default when ``None``). A rank that raises leaves the others waiting this long.

    Returns:
        Whether the process now belongs to a group of more than one process.

    Raises:
        ValueError: an unknown backend, NCCL without CUDA, or malformed environment variables.
    """
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of 'gloo', 'nccl', got {backend!r}")
    if is_distributed():
        return get_world_size() > 1
    if not launched_by_torchrun():
        return False
    backend = backend or _default_backend()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, which is not available here; use 'gloo'")
        torch.cuda.set_device(_environment_int("LOCAL_RANK", 0))
    options = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, **options)
    return get_world_size() > 1


def shutdown_distributed() -> None:
    """Leave the process group, if this process is in one."""
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(
    backend: str | None = None, *, timeout: datetime.timedelta | None = None
) -> Iterator[bool]:
    """:func:`init_distributed` on entry, :func:`shutdown_distributed` on exit, if it joined.

    Yields:
        Whether the block runs in a group of more than one process.
    """
    joined = not is_distributed() and launched_by_torchrun()
    active = init_distributed(backend, timeout=timeout)
    try:
        yield active
    finally:
        if joined:
            shutdown_distributed()
