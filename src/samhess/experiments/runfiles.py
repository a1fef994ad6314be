"""The files of a run directory, written so that a kill at any instant leaves them usable.

Layout of a run directory::

    config.json        resolved configuration (what makes this run this run)
    metrics.jsonl      one JSON object per tracked record, appended and flushed
    timing.json        wall-clock seconds (kept apart so metrics.jsonl is reproducible)
    checkpoint.pt      model, optimizer, RNG states, step, data position, record count
    summary.json       the run's final numbers (written at the end)
    arms/              an experiment's trajectories, one run directory each
                       (``samhess experiment``, :mod:`samhess.experiments.trajectories`)
    analysis/          the seed analysis of the final model (analysis.json + PNGs)
    plots/             curves of the run
    report.md, report.html
    tensorboard/       event files (with --tensorboard)

Whole files are replaced atomically: written to a temporary file in the same directory, flushed
to disk (``fsync``), then renamed over the old one with ``os.replace``, which POSIX makes atomic.
``metrics.jsonl`` grows by whole lines; a record is complete once its newline is on disk. On
resume the log is cut back to the records the checkpoint had seen, so a record written after
the last checkpoint (or half-written by a kill) is dropped and computed again.

Every write goes through :func:`samhess.distributed.is_main_process`: under torchrun only rank 0
writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from samhess.distributed import is_main_process

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.json"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
COMPARE_FILE = "compare.json"
#: An experiment's trajectories, one run directory each (``samhess experiment``).
ARMS_DIR = "arms"
CHECKPOINT_FORMAT = "samhess-checkpoint-1"

#: Everything a run writes; ``--force`` removes these and nothing else.
RUN_OUTPUTS = (
    CONFIG_FILE, METRICS_FILE, TIMING_FILE, CHECKPOINT_FILE, SUMMARY_FILE,
    "report.md", "report.html", "analysis", "plots", "tensorboard", ARMS_DIR,
)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # The rename itself must reach the disk too, or a power cut can undo it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temporary file, fsync, ``os.replace``)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); give it the mode open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8, ``\\n`` line ends) atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, tuples as lists, tensors as numbers/lists.

    Strict JSON has no NaN or Infinity; a diverged loss is recorded as ``null``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value


def dumps_json(value: Any, *, indent: int | None = 2) -> str:
    """Deterministic JSON text: keys in insertion order, floats as Python's shortest repr."""
    separators = (",", ": ") if indent is not None else (",", ":")
    return json.dumps(json_safe(value), indent=indent, separators=separators, allow_nan=False)


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Replace ``path`` by ``value`` as indented JSON, atomically."""
    write_text_atomic(path, dumps_json(value) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None


class MetricsLog:
    """``metrics.jsonl``: one compact JSON object per line, appended, flushed and fsynced.

    Args:
        path: the log file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """The complete records (a trailing line without its newline is ignored)."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        records = []
        for number, line in enumerate(lines[:-1], start=1):  # the last piece has no newline
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path} line {number} is not JSON: {exc}") from None
        return records

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` complete records and drop everything after them."""
        if not is_main_process():
            return
        if not self.path.exists():
            if count:
                raise ValueError(f"{self.path} is missing but the checkpoint saw {count} records")
            return
        data = self.path.read_bytes()
        end = 0
        for _ in range(count):
            newline = data.find(b"\n", end)
            if newline < 0:
                raise ValueError(
                    f"{self.path} holds fewer records than the checkpoint saw ({count})"
                )
            end = newline + 1
        if end != len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a line and force it to disk."""
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = dumps_json(record, indent=None) + "\n"
        with open(self.path, "ab") as handle:
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def reset(self) -> None:
        """Start an empty log."""
        write_bytes_atomic(self.path, b"")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (``torch.save`` into memory, then an atomic replace)."""
    if not is_main_process():
        return
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Only tensors and plain containers are unpickled (``weights_only=True``).

    Raises:
        ValueError: the file is missing, truncated, corrupt, or not a samhess checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise corrupt_checkpoint(path, exc) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a samhess checkpoint; start the run again "
                         "with --force")
    return state


def first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one line, at most ``limit`` characters.

    Library messages can run to several sentences of advice that does not apply here (torch's
    for a damaged checkpoint suggests ``weights_only=False``); the first says what failed.
    """
    text = " ".join(str(exc).split())
    end = text.find(". ")
    sentence = (text if end < 0 else text[:end]).rstrip(".:")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence or type(exc).__name__


def corrupt_checkpoint(path: str | Path, exc: BaseException) -> ValueError:
    """The one-line error for a checkpoint that cannot be read or restored."""
    return ValueError(f"checkpoint {path} is corrupt ({type(exc).__name__}: "
                      f"{first_sentence(exc)}); start the run again with --force")


def holds_run(directory: str | Path) -> bool:
    """Whether ``directory`` already holds a run's (or a comparison's) files."""
    directory = Path(directory)
    return any((directory / name).exists() for name in (CONFIG_FILE, METRICS_FILE,
                                                         CHECKPOINT_FILE, COMPARE_FILE))


def remove_outputs(directory: str | Path, names: Iterable[str] = RUN_OUTPUTS) -> None:
    """Delete the files and folders a run writes (``--force``); other files are left alone."""
    if not is_main_process():
        return
    import shutil

    directory = Path(directory)
    for name in names:
        target = directory / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
