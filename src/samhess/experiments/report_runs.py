"""The run files a report is built from: one run, or a comparison's member runs by optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess.errors import RunFileError
from samhess.experiments import runfiles
from samhess.experiments.analyze import failed_parts
from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.optimizer_kinds import OPTIMIZER_KINDS, OptimizerKind
from samhess.experiments.provenance import PROVENANCE_KEY, stored_provenance
from samhess.experiments.rundir import read_compare_config, read_run_config
from samhess.experiments.runfiles import COMPARE_FILE, CONFIG_FILE, METRICS_FILE

__all__ = ["ANALYSIS_FILE", "TRACKER_SOURCE", "RunFiles", "RunGroups", "read_run",
           "read_groups", "run_dir_of", "kind_of", "label"]

ANALYSIS_FILE = Path("analysis") / "analysis.json"
#: ``config.json``'s ``source`` for a run tracked in the user's own loop by
#: :class:`samhess.Tracker`: its optimizer is the user's, named by its wrapping chain
#: (``IRE(SAM(SGD))``) and no registered kind, and what the loop does not say (seed, data set,
#: batch size) is null. :func:`read_run` lets no other unregistered optimizer through, and checks
#: every other run's configuration in full.
TRACKER_SOURCE = "samhess.Tracker"


def kind_of(name: str) -> OptimizerKind | None:
    """The registered kind called ``name``; ``None`` for the optimizer of a Tracker run."""
    return OPTIMIZER_KINDS.get(name)


def label(name: str) -> str:
    """An optimizer's name in reports: its kind's label (``SAM-IRE``), or a Tracker run's
    optimizer chain as it is."""
    kind = kind_of(name)
    return name if kind is None else kind.label


@dataclass
class RunFiles:
    """The files of one finished (or interrupted) run, as read back."""

    directory: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    analysis: dict[str, Any] | None
    #: Parts of the final analysis that failed, with their errors (left out of ``analysis``).
    analysis_errors: dict[str, str] = field(default_factory=dict)

    @property
    def optimizer(self) -> str:
        return self.config["optimizer"]

    @property
    def seed(self) -> int | None:
        """The run's seed; ``None`` for a Tracker run."""
        return self.config["seed"]

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """The environments the run was computed in (:mod:`samhess.experiments.provenance`)."""
        return stored_provenance(self.config)


def read_run(directory: Path, records: list[dict[str, Any]] | None = None) -> RunFiles:
    """Read one run directory.

    Args:
        directory: the run directory.
        records: its log's records when the caller has already read them (a comparison reads
            each member's log to see whether it started); read here otherwise.

    Raises:
        RunFileError: ``config.json``, ``metrics.jsonl`` or ``analysis.json`` is missing or
            malformed, or the log holds no record.
    """
    stored = runfiles.read_json(directory / CONFIG_FILE)
    if isinstance(stored, dict) and stored.get("source") == TRACKER_SOURCE:
        config = stored  # what the user's loop could say, with nulls for the rest
        if "optimizer" not in config:
            raise RunFileError(f"{directory / CONFIG_FILE} is not a run configuration")
    else:
        # every setting checked (an unknown optimizer is an error, never a guess); the
        # provenance, no setting, kept as recorded
        config = {**read_run_config(directory).to_dict(),
                  PROVENANCE_KEY: stored_provenance(stored)}
    if records is None:
        records = MetricsLog(directory / METRICS_FILE).records()
    if not records:
        raise RunFileError(f"{directory / METRICS_FILE} holds no records; the run has not "
                           "started")
    analysis_path = directory / ANALYSIS_FILE
    analysis = runfiles.read_json(analysis_path) if analysis_path.exists() else None
    errors: dict[str, str] = {}
    if analysis is not None:
        if not isinstance(analysis, dict) or not isinstance(analysis.get("step"), int):
            raise RunFileError(f"{analysis_path} is not a samhess analysis")
        errors = failed_parts(analysis)
        analysis = {key: value for key, value in analysis.items() if key not in errors}
    return RunFiles(directory=directory, config=config, records=records, analysis=analysis,
                    analysis_errors=errors)


def run_dir_of(compare_dir: Path, optimizer: str, seed: int) -> Path:
    """Where a comparison keeps one member run: ``DIR/<optimizer>/seed-<seed>``."""
    return compare_dir / optimizer / f"seed-{seed}"


@dataclass
class RunGroups:
    """What a report covers: its title, a representative configuration, the runs by optimizer
    (in the comparison's order; one run for a run's own report), and the members of a
    comparison that never started (``(optimizer, seed)``; their optimizer is left out of
    ``groups`` when none of its seeds started)."""

    title: str
    config: dict[str, Any]
    groups: dict[str, list[RunFiles]]
    is_compare: bool
    not_started: list[tuple[str, int]] = field(default_factory=list)


def read_groups(directory: Path) -> RunGroups:
    """The runs of a comparison directory (``compare.json``) or of one run directory.

    An unfinished comparison is read as it stands: the members that have a record, and those
    that never started (:attr:`RunGroups.not_started`).

    Raises:
        RunFileError: ``directory`` holds neither, its files are malformed, or no member of
            the comparison has started.
    """
    if (directory / COMPARE_FILE).exists():
        spec = read_compare_config(directory)
        groups: dict[str, list[RunFiles]] = {}
        not_started = []
        for name in spec.optimizers:
            runs = []
            for seed in range(spec.seeds):
                run_dir = run_dir_of(directory, name, seed)
                records = ((run_dir / CONFIG_FILE).exists()
                           and MetricsLog(run_dir / METRICS_FILE).records())
                if records:
                    runs.append(read_run(run_dir, records))
                else:
                    not_started.append((name, seed))
            if runs:
                groups[name] = runs
        if not groups:
            raise RunFileError(f"{directory} holds a comparison none of whose runs has started; "
                               "run it with samhess compare --resume")
        first = next(iter(groups.values()))[0].config
        return RunGroups("samhess comparison", first, groups, True, not_started)
    if (directory / CONFIG_FILE).exists():
        run = read_run(directory)
        name = label(run.optimizer)
        title = f"samhess run: {name}" + ("" if name == run.optimizer else f" ({run.optimizer})")
        title += "" if run.seed is None else f", seed {run.seed}"
        return RunGroups(title, run.config, {run.optimizer: [run]}, False)
    raise RunFileError(f"{directory} holds no run (config.json) or comparison (compare.json)")
