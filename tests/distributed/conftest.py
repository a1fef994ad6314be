"""Launching the two-rank workers of the distributed tests (gloo, CPU, ``torchrun``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def load_module(name: str) -> ModuleType:
    """Import ``tests/distributed/<name>.py`` (the tests and the workers share its problems)."""
    spec = importlib.util.spec_from_file_location(f"_samhess_distributed_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(args: list[str], *, cwd: Path | None = None, timeout: float = 240.0,
             nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc ARGS``, failing the test on a non-zero exit.

    ``--standalone`` rendezvouses on a free local port, so concurrent test runs do not collide.
    """
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *args]
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=timeout)
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {completed.returncode}:\n"
                    f"{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}")
    return completed


def rank_results(tmp_path_factory, worker: str) -> list:
    """Run ``tests/distributed/<worker>.py OUT`` on two ranks; what each rank saved, in rank order."""
    out = tmp_path_factory.mktemp(worker)
    torchrun([str(HERE / f"{worker}.py"), str(out)])
    return [torch.load(out / f"rank-{r}.pt") for r in range(2)]
