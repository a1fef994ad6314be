"""What a run does with its output directory: start fresh, continue, or replace.

:func:`inspect_run_dir` decides without touching anything; :func:`claim_run_dir` then makes the
directory the run's; :func:`abandon_run_dir` takes back what a new run wrote when it fails before
its first record, so that the corrected command finds the directory as it was. All three run
under the directory's lock (:func:`samhess.experiments.lock.run_directory_lock`).

A directory is a samhess run (or a comparison, or an experiment) when its manifest
(:mod:`samhess.experiments.ownership`) says so.
Only files whose content samhess wrote are ever removed or replaced: a directory whose
``config.json`` (or any other run file) is the user's is refused, without suggesting
``--force``, and ``--force`` leaves the user's files where they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from samhess.distributed import is_main_process
from samhess.errors import RunDirectoryError, RunFileError, UsageError
from samhess.experiments import runfiles
from samhess.experiments.config import PRESENTATION_KEYS, RUN_SETTINGS, CompareConfig, RunConfig
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.provenance import (
    PROVENANCE_KEY, run_settings, stored_provenance, with_environment,
)
from samhess.experiments.runfiles import (
    CHECKPOINT_FILE, COMPARE_FILE, CONFIG_FILE, EXPERIMENT_FILES, METRICS_FILE, RUN_FILES,
)

__all__ = ["default_run_dir", "inspect_run_dir", "claim_run_dir", "note_environment",
           "abandon_run_dir", "holds_a_record", "read_run_config", "read_compare_config",
           "first_look", "decide", "refuse_foreign_files", "RUN_KIND", "COMPARISON_KIND",
           "EXPERIMENT_KIND"]

#: What a manifest says its directory holds.
RUN_KIND, COMPARISON_KIND, EXPERIMENT_KIND = "run", "comparison", "experiment"
_NOUNS = {RUN_KIND: "run", COMPARISON_KIND: "comparison", EXPERIMENT_KIND: "experiment"}
#: The file that describes each kind: present and samhess's, or the directory is incomplete.
_DESCRIPTIONS = {RUN_KIND: CONFIG_FILE, COMPARISON_KIND: COMPARE_FILE,
                 EXPERIMENT_KIND: CONFIG_FILE}
#: What a run-like directory (one config.json) writes under fixed names, and the other kinds
#: ``--force`` may replace with it: an experiment replaces a run (as a comparison does), never
#: a comparison, whose member runs are directories of their own.
_RUN_LIKE = {RUN_KIND: (RUN_FILES, ()), EXPERIMENT_KIND: (EXPERIMENT_FILES, (RUN_KIND,))}


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def default_run_dir(config: Any) -> Path:
    """``runs/<dataset>-<optimizer>-seed-<seed>``."""
    return Path("runs") / f"{config.dataset}-{config.optimizer}-seed-{config.seed}"


def refuse_foreign_files(out: Path, names: tuple[str, ...]) -> None:
    """Refuse ``out`` when one of ``names`` exists there and samhess did not write it.

    Raises:
        RunDirectoryError: naming the files; the message does not suggest ``--force``, which
            would not remove them either.
    """
    foreign = OwnedFiles(out).foreign(names)
    if foreign:
        listed = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4
                                           else "")
        raise RunDirectoryError(f"{out} holds {listed}, which samhess did not write (or which "
                                "were changed since); move them away or choose another --out")


def first_look(out: Path, names: tuple[str, ...], *, resume: bool, force: bool) -> bool:
    """The checks every output directory passes; whether ``out`` is new to samhess (no file
    list), in which case none of ``names`` may be there.

    Raises:
        RunDirectoryError: ``out`` is a file, ``resume`` and ``force`` are both asked, or ``out``
            is new to samhess and holds one of ``names``.
    """
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {str(out)!r} is a file, not a directory")
    if resume and force:
        raise RunDirectoryError("--resume and --force contradict each other: pick one")
    if OwnedFiles(out).exists():
        return False
    refuse_foreign_files(out, names)
    return True


def decide(out: Path, kind: str, names: tuple[str, ...], *, resume: bool, force: bool,
           replaceable: tuple[str, ...] = ()) -> str:
    """What to do with ``out`` for a run, a comparison or an experiment (``kind``), without
    touching it.

    Args:
        out: the directory.
        kind: :data:`RUN_KIND`, :data:`COMPARISON_KIND` or :data:`EXPERIMENT_KIND`.
        names: the files it writes under fixed names, which must not be the user's.
        resume, force: as the command line says.
        replaceable: the other kinds ``force`` may replace.

    Returns:
        ``"fresh"`` (nothing of samhess's there), ``"continue"`` (``resume``; the caller checks
        that it is the same run) or ``"replace"`` (``force``, over samhess's files only).

    Raises:
        RunDirectoryError: ``out`` holds files samhess did not write under one of ``names``,
            the other kind, or samhess's files while neither ``resume`` nor ``force`` says
            what to do.
    """
    if first_look(out, names, resume=resume, force=force):
        return "fresh"
    owned = OwnedFiles(out)
    noun, held = _NOUNS[kind], owned.kind or kind
    if held != kind and not (force and held in replaceable):
        advice = ("use --force to replace it or another --out" if held in replaceable
                  else "choose another --out")
        raise RunDirectoryError(f"{out} holds {_a(_NOUNS[held])}, not {_a(noun)}; {advice}")
    if force:
        refuse_foreign_files(out, names)  # the user's files would stay and be overwritten
        return "replace"
    if not resume:
        raise RunDirectoryError(f"{out} already holds {_a(noun)}; pass --resume to continue it "
                                "or --force to replace it")
    description = _DESCRIPTIONS[kind]
    if not owned.owns(description):
        raise RunDirectoryError(f"{out} holds an incomplete {noun} (its {description} is "
                                "missing or was changed); use --force to replace it")
    # The checkpoint and the log have checks of their own on resume (CRCs, the expected
    # steps), whose messages say what is wrong with them.
    refuse_foreign_files(out, tuple(name for name in names
                                    if name not in (CHECKPOINT_FILE, METRICS_FILE)))
    return "continue"


def inspect_run_dir(out: Path, config: Any, *, resume: bool, force: bool,
                    kind: str = RUN_KIND) -> str:
    """:func:`decide` for a run (or an experiment, ``kind``: a directory with one config.json);
    a ``"continue"`` must meet this very run.

    Raises:
        RunDirectoryError: see :func:`decide`; or ``resume`` meets a different run.
        RunFileError: ``resume`` meets an unreadable configuration.
    """
    names, replaceable = _RUN_LIKE[kind]
    decision = decide(out, kind, names, resume=resume, force=force, replaceable=replaceable)
    if decision == "continue":
        _require_same_run(out, runfiles.read_json(out / CONFIG_FILE), config.identity(),
                          _NOUNS[kind])
    return decision


def claim_run_dir(out: Path, config: Any, decision: str, kind: str = RUN_KIND) -> None:
    """Make ``out`` this run's (or experiment's, ``kind``) directory (after
    :func:`inspect_run_dir` said how).

    ``"replace"`` removes the files samhess wrote there, and only those. ``config.json`` gets
    the configuration; a continued run keeps the provenance it recorded (:func:`note_environment`
    adds this session's).
    """
    owned = OwnedFiles(out)
    carried = []
    if decision == "continue":
        carried = stored_provenance(runfiles.read_json(out / CONFIG_FILE))
    if decision == "replace":
        owned.remove_owned()
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    owned.set_kind(kind)
    owned.write_json(CONFIG_FILE, {**config.to_dict(), PROVENANCE_KEY: carried})


def note_environment(out: Path, environment: dict[str, Any], step: int) -> None:
    """Record in ``config.json`` the environment the run continues in from ``step``, unless it
    is the one recorded last (:mod:`samhess.experiments.provenance`). The file stays
    samhess's: the manifest records its new content."""
    stored = runfiles.read_json(out / CONFIG_FILE)
    entries = stored_provenance(stored)
    updated = with_environment(entries, environment, step)
    if updated != entries:
        OwnedFiles(out).write_json(CONFIG_FILE, {**run_settings(stored), PROVENANCE_KEY: updated})


def _require_same_run(out: Path, stored: Any, identity: dict[str, Any], noun: str) -> None:
    if not isinstance(stored, dict):
        raise RunFileError(f"{out / CONFIG_FILE} is not a run configuration")
    stored_identity = {k: v for k, v in run_settings(stored).items()
                       if k not in PRESENTATION_KEYS}
    for key in sorted(set(stored_identity) | set(identity)):
        if stored_identity.get(key) != identity.get(key):
            raise RunDirectoryError(
                f"cannot resume {out}: it holds a different {noun} ({key} = "
                f"{stored_identity.get(key)!r} there, {identity.get(key)!r} now); use --force "
                "to replace it or another --out"
            )


def read_run_config(run_dir: Path) -> Any:
    """The :class:`RunConfig` a run directory's ``config.json`` holds, every key checked (its
    provenance, no part of the configuration, only for being a list of environments).

    Raises:
        RunFileError: the file is missing, not JSON, lacks a setting, or holds a bad value;
            the message names the file and the key.
    """
    path = run_dir / CONFIG_FILE
    stored = runfiles.read_json(path)
    if not isinstance(stored, dict):
        raise RunFileError(f"{path} is not a run configuration (not a JSON object)")
    missing = [name for name in RUN_SETTINGS if name not in stored]
    if missing:
        raise RunFileError(f"{path} is not a complete run configuration: it lacks "
                           f"{', '.join(missing)}")
    provenance = stored.get(PROVENANCE_KEY, [])
    if not isinstance(provenance, list) or not all(isinstance(e, dict) for e in provenance):
        raise RunFileError(f"{path}: {PROVENANCE_KEY} = {provenance!r} is not a list of "
                           "environments")
    try:
        return RunConfig.from_dict(stored)
    except (ValueError, TypeError) as exc:
        # the message names the key as "config.json: key = value ..."
        raise RunFileError(f"{run_dir}{os.sep}{exc}") from None


def read_compare_config(directory: Path) -> CompareConfig:
    """The comparison ``directory/compare.json`` describes, every key checked.

    Raises:
        RunFileError: the file is missing, not JSON, or not a complete comparison description.
    """
    path = directory / COMPARE_FILE
    try:
        return CompareConfig.from_dict(runfiles.read_json(path), source=str(path))
    except UsageError as exc:
        raise RunFileError(str(exc)) from None


def holds_a_record(out: Path) -> bool:
    try:
        return b"\n" in (out / METRICS_FILE).read_bytes()
    except OSError:
        return False


def abandon_run_dir(out: Path) -> None:
    """Remove the files a new run wrote (samhess's only; the lock removes ``out`` if it made it
    and it is left empty)."""
    if not is_main_process():
        return
    OwnedFiles(out).remove_owned()
