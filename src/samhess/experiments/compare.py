"""``samhess compare``: one task, several optimizers and seeds, one report.

The comparison directory holds ``compare.json`` (what was compared), one run directory per
optimizer and seed (``DIR/<optimizer>/seed-<s>/``, each a complete ``samhess run`` directory),
and the report of :mod:`samhess.experiments.report` over all of them.

With no arguments this is the project's main job: scikit-learn's digits (shipped with
scikit-learn, no network), an MLP, SGD, SAM, IRE and SAM-IRE, three seeds of 1000 steps, about
25 s of CPU time on one core. Its report says whether the seed note's claims hold on that task.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samhess.distributed import is_main_process, on_main_process
from samhess.experiments import runfiles
from samhess.experiments.config import PRESENTATION_KEYS, CompareConfig
from samhess.experiments.progress import ComparisonProgress, progress_enabled
from samhess.experiments.report import Report, build_report
from samhess.experiments.report_runs import run_dir_of
from samhess.experiments.runfiles import COMPARE_FILE, CONFIG_FILE, TIMING_FILE
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


def _prepare_compare_dir(out: Path, config: CompareConfig, *, resume: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if runfiles.holds_run(out):
        if (out / CONFIG_FILE).exists() and not (out / COMPARE_FILE).exists():
            if not force:
                raise ValueError(f"{out} holds a single run, not a comparison; use --force to "
                                 "replace it or another --out")
        if force:
            _remove_comparison(out)
        elif resume:
            stored = runfiles.read_json(out / COMPARE_FILE)
            _require_same_comparison(out, stored, config.identity())
        else:
            raise ValueError(f"{out} already holds a comparison; pass --resume to continue it or "
                             "--force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    runfiles.write_json_atomic(out / COMPARE_FILE, config.to_dict())


def _remove_comparison(out: Path) -> None:
    import shutil

    stored = None
    if (out / COMPARE_FILE).exists():
        try:
            stored = runfiles.read_json(out / COMPARE_FILE)
        except ValueError:
            stored = None
    names = set((stored or {}).get("optimizers", [])) if isinstance(stored, dict) else set()
    if runfiles.is_main_process():
        for name in names:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    runfiles.remove_outputs(out, runfiles.RUN_OUTPUTS + (COMPARE_FILE, "claims.json"))


def _require_same_comparison(out: Path, stored: Any, identity: dict[str, Any]) -> None:
    if not isinstance(stored, dict) or "task" not in stored or not isinstance(stored["task"], dict):
        raise ValueError(f"{out / COMPARE_FILE} is not a comparison description")
    stored = dict(stored)
    stored["task"] = {k: v for k, v in stored["task"].items() if k not in PRESENTATION_KEYS}
    for key in ("optimizers", "seeds"):
        if stored.get(key) != identity[key]:
            raise ValueError(f"cannot resume {out}: it holds a different comparison ({key} = "
                             f"{stored.get(key)!r} there, {identity[key]!r} now); use --force "
                             "or another --out")
    for key in sorted(set(stored["task"]) | set(identity["task"])):
        if stored["task"].get(key) != identity["task"].get(key):
            raise ValueError(f"cannot resume {out}: it holds a different comparison ({key} = "
                             f"{stored['task'].get(key)!r} there, {identity['task'].get(key)!r} "
                             "now); use --force or another --out")


def run_compare(config: CompareConfig, out: str | Path, *, resume: bool = False,
                force: bool = False, quiet: bool = False) -> CompareResult:
    """Run every optimizer and seed of ``config`` into ``out`` and write the report.

    With ``resume``, finished member runs are kept, an interrupted one continues from its
    checkpoint and the rest start; with ``resume`` and no comparison in ``out``, one line on
    stderr says a fresh one starts. A new comparison whose first run fails before its first
    record leaves ``out`` as it found it.

    Raises:
        ValueError: bad settings, missing data, or ``out`` holding something else without
            ``resume``/``force``; one line.
    """
    out = Path(out)
    # Check every member's settings and the data before claiming the directory.
    members = [(name, seed, config.run_config(name, seed))
               for name in config.optimizers for seed in range(config.seeds)]
    # Missing data files and settings the model cannot meet (--top-k) fail before the
    # directory is claimed; the members share the data and the model.
    build_task(members[0][2])
    fresh = not on_main_process(runfiles.holds_run, out)
    if resume and fresh and is_main_process():
        print(f"samhess: no comparison found in {out}; starting a fresh one", file=sys.stderr)
    created = fresh and not on_main_process(out.exists)
    # Under torchrun, rank 0 decides what the directory holds and every rank follows.
    on_main_process(_prepare_compare_dir, out, config, resume=resume, force=force)
    total = len(members)
    show = progress_enabled(quiet) and is_main_process()
    progress = ComparisonProgress([name for name, _, _ in members], enabled=show)
    try:
        for index, (name, seed, run_config) in enumerate(members, start=1):
            run_dir = run_dir_of(out, name, seed)
            desc = f"[{index}/{total}] {name} seed {seed}"
            continuing = resume and on_main_process(runfiles.holds_run, run_dir)
            trained = continuing and on_main_process(_trained_to, run_dir) == run_config.steps
            started = time.perf_counter()
            run_experiment(run_config, run_dir, resume=continuing, quiet=not show,
                           progress_desc=desc, write_report=False, comparison=progress)
            if trained:
                progress.skipped()
            else:
                progress.finished(name, time.perf_counter() - started)
    except BaseException:
        # A new comparison whose first run failed before its first record (that run has
        # removed its own files) leaves the directory as it found it.
        if fresh:
            _abandon_comparison(out, config, created)
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


def _abandon_comparison(out: Path, config: CompareConfig, created: bool) -> None:
    """Remove compare.json, the empty optimizer folders and ``out`` if created and empty, unless
    some member run has started (holds files)."""
    if not is_main_process():
        return
    if any(runfiles.holds_run(run_dir_of(out, name, seed))
           for name in config.optimizers for seed in range(config.seeds)):
        return
    runfiles.remove_outputs(out, (COMPARE_FILE,))
    for directory in [*(out / name for name in config.optimizers), *([out] if created else [])]:
        with contextlib.suppress(OSError):  # only empty directories go
            directory.rmdir()
