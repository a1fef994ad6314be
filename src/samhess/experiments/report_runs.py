"""The run files a report is built from: one run, or a comparison's member runs by optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samhess.experiments import runfiles
from samhess.experiments.optimizer_kinds import OPTIMIZER_KINDS, OptimizerKind, optimizer_kind
from samhess.experiments.provenance import stored_provenance
from samhess.experiments.runfiles import (
    COMPARE_FILE, CONFIG_FILE, METRICS_FILE, TIMING_FILE, MetricsLog,
)

__all__ = ["ANALYSIS_FILE", "TRACKER_SOURCE", "RunFiles", "RunGroups", "read_run",
           "read_groups", "run_dir_of", "kind_of", "label"]

ANALYSIS_FILE = Path("analysis") / "analysis.json"
#: ``config.json``'s ``source`` for a run tracked in the user's own loop by
#: :class:`samhess.Tracker`: its optimizer is the user's, named by its wrapping chain
#: (``IRE(SAM(SGD))``) and no registered kind, and what the loop does not say (seed, data set,
#: batch size) is null. :func:`read_run` lets no other unregistered optimizer through.
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
    timing: dict[str, Any] | None
    analysis: dict[str, Any] | None

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


def read_run(directory: Path) -> RunFiles:
    """Read one run directory.

    Raises:
        ValueError: ``config.json`` or ``metrics.jsonl`` is missing or malformed.
    """
    config = runfiles.read_json(directory / CONFIG_FILE)
    if not isinstance(config, dict) or "optimizer" not in config:
        raise ValueError(f"{directory / CONFIG_FILE} is not a run configuration")
    if config.get("source") != TRACKER_SOURCE:
        optimizer_kind(config["optimizer"])  # an unknown name is an error, never a guess
    records = MetricsLog(directory / METRICS_FILE).records()
    if not records:
        raise ValueError(f"{directory / METRICS_FILE} holds no records; the run has not started")
    timing_path = directory / TIMING_FILE
    timing = runfiles.read_json(timing_path) if timing_path.exists() else None
    analysis_path = directory / ANALYSIS_FILE
    analysis = runfiles.read_json(analysis_path) if analysis_path.exists() else None
    return RunFiles(directory=directory, config=config, records=records, timing=timing,
                    analysis=analysis)


def run_dir_of(compare_dir: Path, optimizer: str, seed: int) -> Path:
    """Where a comparison keeps one member run: ``DIR/<optimizer>/seed-<seed>``."""
    return compare_dir / optimizer / f"seed-{seed}"


@dataclass
class RunGroups:
    """What a report covers: its title, a representative configuration, and the runs by
    optimizer (in the comparison's order; one run for a run's own report)."""

    title: str
    config: dict[str, Any]
    groups: dict[str, list[RunFiles]]
    is_compare: bool


def read_groups(directory: Path) -> RunGroups:
    """The runs of a comparison directory (``compare.json``) or of one run directory.

    Raises:
        ValueError: ``directory`` holds neither, or a comparison lacks member runs.
    """
    if (directory / COMPARE_FILE).exists():
        spec = runfiles.read_json(directory / COMPARE_FILE)
        try:
            names, seeds = list(spec["optimizers"]), int(spec["seeds"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{directory / COMPARE_FILE} is not a comparison description") from None
        groups = {}
        for name in names:
            runs = [read_run(run_dir_of(directory, name, seed)) for seed in range(seeds)
                    if (run_dir_of(directory, name, seed) / CONFIG_FILE).exists()]
            if len(runs) != seeds:
                raise ValueError(f"{directory} lacks runs of {name}; finish them with "
                                 "samhess compare --resume")
            groups[name] = runs
        first = next(iter(groups.values()))[0].config
        return RunGroups("samhess comparison", first, groups, True)
    if (directory / CONFIG_FILE).exists():
        run = read_run(directory)
        name = label(run.optimizer)
        title = f"samhess run: {name}" + ("" if name == run.optimizer else f" ({run.optimizer})")
        title += "" if run.seed is None else f", seed {run.seed}"
        return RunGroups(title, run.config, {run.optimizer: [run]}, False)
    raise ValueError(f"{directory} holds no run (config.json) or comparison (compare.json)")
