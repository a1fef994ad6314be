"""Where a run was computed: package versions, the device, and the source's git commit.

A run's ``config.json`` holds, beside its settings, the key ``provenance``: a list of
environments, the first the one the run started in and one more for every resumed session whose
environment differed from the one before it (with ``from_step``, the step it resumed at). An
environment holds the versions of samhess, Python, torch and numpy, the operating system and
machine, the device (the CPU model, or the GPU's name), torch's intra-op threads, the number of
processes (torchrun), and, when
samhess runs from a git checkout, the commit and whether tracked files were modified.

Provenance is no part of what makes a run that run: :func:`run_settings` strips it before
``config.json`` is read back as a configuration or compared on ``--resume``, so a run resumes on
another torch version (and records that it did). Nothing in it depends on the time or the host's
name, so that the same run on the same machine writes the same ``config.json``.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PROVENANCE_KEY", "environment", "run_settings", "stored_provenance",
           "with_environment", "same_environment"]

#: The key of ``config.json`` that holds the provenance.
PROVENANCE_KEY = "provenance"
#: Keys of an environment that only say when it applies, not what it was.
_POSITION_KEYS = ("from_step",)


def run_settings(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings as ``config.json`` holds them, without the provenance."""
    return {key: value for key, value in stored.items() if key != PROVENANCE_KEY}


def stored_provenance(stored: Any) -> list[dict[str, Any]]:
    """The environments ``config.json`` records (an empty list for a run written without)."""
    if not isinstance(stored, Mapping):
        return []
    entries = stored.get(PROVENANCE_KEY)
    if not isinstance(entries, list):
        return []
    return [dict(entry) for entry in entries if isinstance(entry, Mapping)]


def same_environment(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two environments agree, wherever in the run they were recorded."""
    def strip(entry: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in _POSITION_KEYS}

    return strip(first) == strip(second)


def with_environment(entries: list[dict[str, Any]], current: dict[str, Any],
                     step: int) -> list[dict[str, Any]]:
    """``entries`` with ``current`` appended (from ``step``) when it differs from the last."""
    if entries and same_environment(entries[-1], current):
        return entries
    return [*entries, {**current, "from_step": step}]


def environment(device: Any, processes: int = 1) -> dict[str, Any]:
    """The environment of this process for a run on ``device`` (a ``torch.device``) by
    ``processes`` processes (torchrun's world size)."""
    import numpy
    import torch

    from samhess import __version__

    commit, modified = _git_state()
    return {
        "samhess": __version__,
        "git_commit": commit,
        "git_modified": modified,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "device": _device_name(torch.device(device)),
        "torch_threads": torch.get_num_threads(),
        "processes": processes,
    }


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda: {torch.cuda.get_device_name(index)} (CUDA {torch.version.cuda})"
    return f"{device.type}: {_cpu_model()}"


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """The commit of the checkout samhess is imported from, and whether tracked files differ
    from it; ``(None, None)`` for an installed package or where git is not available."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists() or not (root / "pyproject.toml").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit.stdout.strip() or None, bool(status.stdout.strip())
