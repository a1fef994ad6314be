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
    .samhess-files.json   what samhess wrote here (:mod:`samhess.experiments.ownership`)
    .samhess.lock         held while a process writes here (:mod:`samhess.experiments.lock`)

Whole files are replaced atomically: written to a temporary file in the same directory, flushed
to disk (``fsync``), then renamed over the old one with ``os.replace``, which POSIX makes atomic.
``metrics.jsonl`` grows by whole lines; a record is complete once its newline is on disk. On
resume the log is cut back to the records the checkpoint had seen, so a record written after
the last checkpoint (or half-written by a kill) is dropped and computed again
(:class:`samhess.experiments.metrics_log.MetricsLog`). A checkpoint's zip archive carries a
CRC-32 of every member, which :func:`load_checkpoint` verifies before unpickling anything.

Every write goes through :func:`samhess.distributed.is_main_process`: under torchrun only rank 0
writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from samhess.distributed import is_main_process
from samhess.errors import RunFileError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.json"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
COMPARE_FILE = "compare.json"
#: An experiment's trajectories, one run directory each (``samhess experiment``).
ARMS_DIR = "arms"
CHECKPOINT_FORMAT = "samhess-checkpoint-1"

CLAIMS_FILE = "claims.json"
REPORT_FILES = ("report.md", "report.html")
#: The figures of a report, in page order (:data:`samhess.experiments.report.FIGURES` draws
#: them), and the file of the numbers each draws.
REPORT_FIGURES = ("curves.png", "dynamics.png", "eigenvalues.png", "layers.png", "gains.png",
                  "taylor.png", "spectrum.png", "landscape.png")
FIGURES_FILE = "figures.json"
#: What a report writes into ``plots/``, and ``samhess analyze`` into ``analysis/``.
REPORT_PLOTS = tuple(f"plots/{name}" for name in (*REPORT_FIGURES, FIGURES_FILE))
ANALYSIS_FILES = ("analysis/analysis.json", *(f"analysis/{name}" for name in (
    "gains.png", "sharp_flat.png", "taylor.png", "spectral_density.png", "landscape.png")))
#: The files a run writes under fixed names: a fresh run refuses a directory where one of them
#: exists and is not samhess's, rather than overwrite it.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, TIMING_FILE, CHECKPOINT_FILE, SUMMARY_FILE,
             *REPORT_FILES, *ANALYSIS_FILES, *REPORT_PLOTS)
#: The files a comparison writes into its own directory under fixed names.
COMPARE_FILES = (COMPARE_FILE, SUMMARY_FILE, CLAIMS_FILE, *REPORT_FILES, *REPORT_PLOTS)
#: The files an experiment (``samhess experiment``) writes into its directory under fixed
#: names; its trajectories, in ``arms/``, each keep a file list of their own.
EXPERIMENT_FILES = (CONFIG_FILE, SUMMARY_FILE, *REPORT_FILES)


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


#: The temporary files of :func:`write_bytes_atomic` (``tempfile.mkstemp``'s eight random
#: characters between ``.NAME.`` and ``.tmp``) and of the analysis plots (``.NAME.tmp.png``).
_INTERRUPTED_WRITE = re.compile(r"\..+\.([a-z0-9_]{8}\.tmp|tmp\.png)")


def remove_interrupted_writes(directory: str | Path, lock_file: str) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in ``directory``.

    An atomic write creates a hidden temporary file and renames it over its target; a process
    killed in between (``kill -9``, a power cut) leaves the temporary file, which no run reads,
    and a resumed run would otherwise carry it forever. Only the writer holding ``directory``'s
    lock may call this: no write of another samhess process can then be in flight there.
    Subdirectories holding ``lock_file`` are left to their own lock's holder.

    Returns:
        The files removed.
    """
    removed = []
    pending = [Path(directory)]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not os.path.exists(os.path.join(entry.path, lock_file)):
                    pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and _INTERRUPTED_WRITE.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


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
    except BaseException as exc:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise naming(exc, path) from None
        raise
    _fsync_directory(path.parent)


def naming(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming ``path`` if it names no file: a full disk fails in ``write()`` or
    ``fsync()``, whose errors do not say which file was being written."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


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
    """Read a JSON file; a missing or malformed file is a :class:`RunFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFileError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{path} is not readable JSON: {exc}") from None


def checkpoint_bytes(state: Mapping[str, Any]) -> bytes:
    """A checkpoint's file content: ``torch.save`` of ``state`` tagged with the format."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically (``torch.save`` into memory, then an atomic replace)."""
    if not is_main_process():
        return
    write_bytes_atomic(path, checkpoint_bytes(state))


def archive_damage(path: Path) -> str | None:
    """What is wrong with the zip archive ``torch.save`` wrote at ``path`` (unreadable, or a
    member whose content does not match its CRC-32), or ``None`` when nothing is.

    ``torch.load`` does not check the CRCs: a flipped bit in a tensor loads as a wrong number
    without a word.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {first_sentence(exc)}"
    if bad is not None:
        return f"the CRC-32 of its member {bad} does not match its content"
    return None


def verify_archive(path: Path) -> None:
    """Check the CRC-32 of every member of a checkpoint's zip archive (:func:`archive_damage`).

    Raises:
        RunFileError: the archive is unreadable or a member's content does not match its CRC.
    """
    damage = archive_damage(path)
    if damage is not None:
        raise RunFileError(f"checkpoint {path} is corrupt ({damage}); remove it and start the "
                           "run again with --force")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    The archive's CRCs are verified first (:func:`verify_archive`); then only tensors and plain
    containers are unpickled (``weights_only=True``).

    Raises:
        RunFileError: the file is missing, truncated, corrupt, or not a samhess checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"checkpoint {path} does not exist")
    verify_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise corrupt_checkpoint(path, exc) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunFileError(f"checkpoint {path} is not a samhess checkpoint; start the run again "
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


def corrupt_checkpoint(path: str | Path, exc: BaseException) -> RunFileError:
    """The one-line error for a checkpoint that cannot be read or restored."""
    return RunFileError(f"checkpoint {path} is corrupt ({type(exc).__name__}: "
                        f"{first_sentence(exc)}); remove it and start the run again with --force")
