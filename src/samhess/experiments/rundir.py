"""What a run does with its output directory: start fresh, continue, or replace.

:func:`inspect_run_dir` decides without touching anything; :func:`claim_run_dir` then makes the
directory the run's; :func:`abandon_run_dir` takes back what a new run wrote when it fails before
its first record, so that the corrected command finds the directory as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from samhess.distributed import is_main_process
from samhess.experiments import runfiles
from samhess.experiments.config import PRESENTATION_KEYS
from samhess.experiments.provenance import (
    PROVENANCE_KEY, run_settings, stored_provenance, with_environment,
)
from samhess.experiments.runfiles import CONFIG_FILE, METRICS_FILE

__all__ = ["default_run_dir", "inspect_run_dir", "claim_run_dir", "note_environment",
           "abandon_run_dir", "holds_a_record"]


def default_run_dir(config: Any) -> Path:
    """``runs/<dataset>-<optimizer>-seed-<seed>``."""
    return Path("runs") / f"{config.dataset}-{config.optimizer}-seed-{config.seed}"


def inspect_run_dir(out: Path, config: Any, *, resume: bool, force: bool) -> str:
    """What to do with ``out``, decided without touching it.

    Returns:
        ``"fresh"`` (nothing there), ``"continue"`` (``resume`` of this very run) or
        ``"replace"`` (``force`` over existing run files).

    Raises:
        ValueError: ``out`` holds a run and neither ``resume`` nor ``force`` says what to do,
            or ``resume`` meets a different configuration.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if not runfiles.holds_run(out):
        return "fresh"
    if force:
        return "replace"
    if not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or "
                         "--force to replace it")
    stored_path = out / CONFIG_FILE
    if (out / runfiles.COMPARE_FILE).exists() or not stored_path.exists():
        raise ValueError(f"{out} holds a comparison or an incomplete run, not a run to "
                         "resume; use --force to replace it")
    _require_same_run(out, runfiles.read_json(stored_path), config.identity())
    return "continue"


def claim_run_dir(out: Path, config: Any, decision: str) -> None:
    """Make ``out`` this run's directory (after :func:`inspect_run_dir` said how).

    ``config.json`` gets the configuration; a continued run keeps the provenance it recorded
    (:func:`note_environment` adds this session's).
    """
    carried = []
    if decision == "continue":
        carried = stored_provenance(runfiles.read_json(out / CONFIG_FILE))
    if decision == "replace":
        runfiles.remove_outputs(out)
    if runfiles.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    runfiles.write_json_atomic(out / CONFIG_FILE, {**config.to_dict(), PROVENANCE_KEY: carried})


def note_environment(out: Path, environment: dict[str, Any], step: int) -> None:
    """Record in ``config.json`` the environment the run continues in from ``step``, unless it
    is the one recorded last (:mod:`samhess.experiments.provenance`)."""
    stored = runfiles.read_json(out / CONFIG_FILE)
    entries = stored_provenance(stored)
    updated = with_environment(entries, environment, step)
    if updated != entries:
        runfiles.write_json_atomic(out / CONFIG_FILE,
                                   {**run_settings(stored), PROVENANCE_KEY: updated})


def _require_same_run(out: Path, stored: Any, identity: dict[str, Any]) -> None:
    if not isinstance(stored, dict):
        raise ValueError(f"{out / CONFIG_FILE} is not a run configuration")
    stored_identity = {k: v for k, v in run_settings(stored).items()
                       if k not in PRESENTATION_KEYS}
    for key in sorted(set(stored_identity) | set(identity)):
        if stored_identity.get(key) != identity.get(key):
            raise ValueError(
                f"cannot resume {out}: it holds a different run ({key} = "
                f"{stored_identity.get(key)!r} there, {identity.get(key)!r} now); use --force "
                "to replace it or another --out"
            )


def holds_a_record(out: Path) -> bool:
    try:
        return b"\n" in (out / METRICS_FILE).read_bytes()
    except OSError:
        return False


def abandon_run_dir(out: Path, created: bool) -> None:
    """Remove a new run's files (and ``out`` itself if the run created it and it is empty)."""
    if not is_main_process():
        return
    runfiles.remove_outputs(out)
    if created:
        with contextlib.suppress(OSError):  # not empty: files of the user's stay, and out too
            out.rmdir()
