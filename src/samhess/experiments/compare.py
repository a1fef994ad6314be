"""``samhess compare``: one task, several optimizers and seeds, one report.

The comparison directory holds ``compare.json`` (what was compared), one run directory per
optimizer and seed (``DIR/<optimizer>/seed-<s>/``, each a complete ``samhess run`` directory),
and the report of :mod:`samhess.experiments.report` over all of them.

With no arguments this is the project's main job: scikit-learn's digits (shipped with
scikit-learn, no network), an MLP, SGD, SAM, IRE and SAM-IRE, three seeds of 1000 steps, about
25 s of CPU time on one core. Its report says whether the seed note's claims hold on that task.

The comparison holds its directory's lock for the whole comparison (each member run holds its
own as it runs), and, like a run, writes, replaces and removes only samhess's own files
(:mod:`samhess.experiments.ownership`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samhess.distributed import is_main_process, on_main_process
from samhess.errors import RunDirectoryError
from samhess.experiments import runfiles
from samhess.experiments.config import CompareConfig
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.progress import ComparisonProgress, progress_enabled
from samhess.experiments.report import Report, build_report
from samhess.experiments.report_runs import run_dir_of
from samhess.experiments.rundir import (
    COMPARISON_KIND, RUN_KIND, decide, inspect_run_dir, read_compare_config,
)
from samhess.experiments.runfiles import COMPARE_FILE, COMPARE_FILES, TIMING_FILE
from samhess.experiments.task import build_task
from samhess.experiments.train import run_experiment

DEFAULT_COMPARE_DIR = "runs/compare"


@dataclass
class CompareResult:
    """What :func:`run_compare` returns."""

    out: Path
    report: Report

    def screen_summary(self) -> str:
        return self.report.screen_summary()


def _inspect_compare_dir(out: Path, config: CompareConfig, *, resume: bool,
                         force: bool) -> str:
    """``"fresh"``, ``"continue"`` or ``"replace"``, decided without touching ``out``
    (:func:`samhess.experiments.rundir.decide`; ``--force`` may replace a single run)."""
    decision = decide(out, COMPARISON_KIND, COMPARE_FILES, resume=resume, force=force,
                      replaceable=(RUN_KIND,))
    if decision == "continue":
        _require_same_comparison(out, read_compare_config(out).identity(), config.identity())
    return decision


def _claim_compare_dir(out: Path, config: CompareConfig, decision: str) -> None:
    if decision == "replace":
        _remove_comparison(out)
    owned = OwnedFiles(out)
    owned.set_kind(COMPARISON_KIND)
    owned.write_json(COMPARE_FILE, config.to_dict())


def _member_dirs(out: Path) -> list[Path]:
    """The member run directories in ``out`` (``<optimizer>/seed-<s>`` holding a manifest)."""
    return sorted(path.parent for path in out.glob("*/seed-*/.samhess-files.json"))


def _remove_comparison(out: Path) -> None:
    """Remove samhess's files of every member run, then of the comparison itself; the user's
    files stay, and so do the folders holding them."""
    if not is_main_process():
        return
    for member in _member_dirs(out):
        with run_directory_lock(member, "samhess compare --force"):
            OwnedFiles(member).remove_owned()
        with contextlib.suppress(OSError):  # the optimizer's folder, if now empty
            member.parent.rmdir()
    OwnedFiles(out).remove_owned()


def _require_same_comparison(out: Path, stored: dict[str, Any], identity: dict[str, Any]
                             ) -> None:
    """Refuse to resume unless the stored comparison is this one (both are
    :meth:`CompareConfig.identity`, presentation keys already left out)."""
    compared = [(key, stored[key], identity[key]) for key in ("optimizers", "seeds")]
    compared += [(key, stored["task"].get(key), identity["task"].get(key))
                 for key in sorted(set(stored["task"]) | set(identity["task"]))]
    for key, there, now in compared:
        if there != now:
            raise RunDirectoryError(f"cannot resume {out}: it holds a different comparison "
                                    f"({key} = {there!r} there, {now!r} now); use --force or "
                                    "another --out")


def run_compare(config: CompareConfig, out: str | Path, *, resume: bool = False,
                force: bool = False, quiet: bool = False) -> CompareResult:
    """Run every optimizer and seed of ``config`` into ``out`` and write the report.

    With ``resume``, finished member runs are kept, an interrupted one continues from its
    checkpoint and the rest start; with ``resume`` and no comparison in ``out``, one line on
    stderr says a fresh one starts. A new comparison whose first run fails before its first
    record leaves ``out`` as it found it.

    Raises:
        SamhessError: bad settings, missing data, ``out`` (or a member's directory) written by
            another process, holding something else without ``resume``/``force``, or holding
            files samhess did not write; one line.
    """
    out = Path(out)
    # Check every member's settings and the data before claiming the directory.
    members = [(name, seed, config.run_config(name, seed))
               for name in config.optimizers for seed in range(config.seeds)]
    # Missing data files and settings the model cannot meet (--top-k) fail before the
    # directory is claimed; the members share the data and the model.
    build_task(members[0][2])
    with run_directory_lock(out, "samhess compare"):
        # Under torchrun, rank 0 decides what the directory holds and every rank follows.
        decision = on_main_process(_inspect_compare_dir, out, config, resume=resume,
                                   force=force)
        if resume and decision == "fresh" and is_main_process():
            print(f"samhess: no comparison found in {out}; starting a fresh one",
                  file=sys.stderr)
        on_main_process(_claim_compare_dir, out, config, decision)
        total = len(members)
        show = progress_enabled(quiet) and is_main_process()
        progress = ComparisonProgress([name for name, _, _ in members], enabled=show)
        try:
            continuing = {}
            for name, seed, run_config in members:  # every member's directory, before any runs
                run_dir = run_dir_of(out, name, seed)
                continuing[run_dir] = resume and on_main_process(OwnedFiles(run_dir).exists)
                on_main_process(inspect_run_dir, run_dir, run_config,
                                resume=continuing[run_dir], force=False)
            for index, (name, seed, run_config) in enumerate(members, start=1):
                run_dir = run_dir_of(out, name, seed)
                desc = f"[{index}/{total}] {name} seed {seed}"
                trained = (continuing[run_dir]
                           and on_main_process(_trained_to, run_dir) == run_config.steps)
                started = time.perf_counter()
                run_experiment(run_config, run_dir, resume=continuing[run_dir], quiet=not show,
                               progress_desc=desc, write_report=False, comparison=progress)
                if trained:
                    progress.skipped()
                else:
                    progress.finished(name, time.perf_counter() - started)
        except BaseException:
            # A new comparison whose first run failed before its first record (that run has
            # removed its own files) leaves the directory as it found it.
            if decision == "fresh":
                _abandon_comparison(out, config)
            raise
        finally:
            progress.close()
        return CompareResult(out=out, report=on_main_process(build_report, out))


def _trained_to(run_dir: Path) -> int | None:
    """The steps a member run had trained when its timing was last written."""
    try:
        timing = runfiles.read_json(run_dir / TIMING_FILE)
    except ValueError:
        return None
    return timing.get("steps") if isinstance(timing, dict) else None


def _abandon_comparison(out: Path, config: CompareConfig) -> None:
    """Remove the comparison's files unless some member run has started (the lock then removes
    ``out`` and the optimizer folders it or the members' locks created, if left empty)."""
    if not is_main_process():
        return
    if any(OwnedFiles(run_dir_of(out, name, seed)).exists()
           for name in config.optimizers for seed in range(config.seeds)):
        return
    OwnedFiles(out).remove_owned()
