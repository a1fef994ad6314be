"""A tiny finished run shared by the run, report and CLI tests of the experiment layer."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

#: Flags of a run that takes seconds: digits, the default MLP, few steps, tiny curvature budgets.
TINY_RUN_FLAGS = {
    "steps": 6, "track_every": 3, "batch_size": 32, "top_k": 2, "trace_matvecs": 6,
    "tracking_batch_size": 64, "eval_examples": 128, "density_probes": 1,
    "density_lanczos_steps": 6,
}


def tiny_cli_args(**overrides) -> list[str]:
    """The same settings as command-line arguments."""
    values = {**TINY_RUN_FLAGS, **overrides}
    args = []
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def run_in_process(out, **flags):
    """``samhess run`` in this process with the command line's single thread, so its files can
    be compared byte for byte with a run started from the command line."""
    from samhess.experiments.config import build_run_config
    from samhess.experiments.threads import torch_threads
    from samhess.experiments.train import run_experiment

    resume, force = flags.pop("resume", False), flags.pop("force", False)
    config = build_run_config({}, {**TINY_RUN_FLAGS, **flags})
    with torch_threads(1):
        return run_experiment(config, out, resume=resume, force=force, quiet=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished ``sam-ire`` run (every code path: SAM's two passes and IRE's mask)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    run_in_process(out, optimizer="sam-ire")
    return out


#: The tiny comparison's command-line arguments (after ``compare --out DIR``).
TINY_COMPARE_ARGS = ("--optimizers", "sgd,sam,ire", "--seeds", "2", "--quiet",
                     *tiny_cli_args(steps=4, track_every=2))


@pytest.fixture(scope="session")
def tiny_compare(tmp_path_factory):
    """A finished comparison of SGD, SAM and IRE over two seeds of four steps."""
    from samhess.cli import main

    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main(["compare", "--out", str(out), *TINY_COMPARE_ARGS]) == 0
    return out


def sigkill_when(process: subprocess.Popen, ready: Callable[[], bool],
                 timeout: float = 120.0) -> None:
    """``kill -9`` ``process`` as soon as ``ready()`` (polled every 10 ms), while it still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.01)
    assert process.poll() is None, "the process ended before it could be killed mid-way"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def flip_a_bit_of_the_largest_tensor(path: Path) -> str:
    """Flip one low mantissa bit in the data of the largest tensor ``torch.save`` wrote to
    ``path`` (a weight matrix), in place; returns its archive member."""
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if "/data/" in info.filename]
        info = max(members, key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:
                                                          info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 9] ^= 0x04  # a low mantissa bit of a float32 (and of a float64)
    path.write_bytes(bytes(data))
    return info.filename
