"""An experiment's report: ``summary.json``, ``report.md``, ``report.html`` and ``plots/``.

The pages are built from the experiment's :class:`~samhess.experiments.trajectories.experiment.
Findings` with the run reports' pieces: the page blocks and their Markdown and HTML
(:mod:`samhess.experiments.report_pages`), matplotlib's default style and PNGs without a date
stamp (:mod:`samhess.experiments.report_plotting`), so the same records give byte-identical
files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess.experiments import runfiles
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.report_pages import (
    PLOTS_DIR, Block, Heading, Table, Text, Verdicts, html_page, markdown, setting_text,
    text_table,
)
from samhess.experiments.report_plotting import default_style, new_figure, png_bytes
from samhess.experiments.runfiles import SUMMARY_FILE
from samhess.experiments.trajectories.arms import Arm
from samhess.experiments.trajectories.experiment import (
    Experiment, ExperimentConfig, Findings, Records,
)

__all__ = ["draw_png", "plot_series", "write_report", "ExperimentReport"]

#: Margins of a grid of panels; a single row needs more room below for its x labels.
_MARGINS = {"left": 0.08, "right": 0.98, "bottom": 0.08, "top": 0.95, "wspace": 0.22,
            "hspace": 0.32}


def draw_png(draw: Callable[[Any], None], *, ncols: int = 1, nrows: int = 1,
             size: tuple[float, float] = (6.4, 4.2)) -> bytes:
    """A PNG of ``draw(axes)`` (``axes[row, column]``) in matplotlib's default style."""
    margins = {**_MARGINS, "bottom": 0.13} if nrows == 1 else _MARGINS
    with default_style():
        figure, axes = new_figure(size, ncols, nrows, margins=margins)
        draw(axes)
        return png_bytes(figure)


def plot_series(axis: Any, arms: Sequence[Arm], records: Records, key: str, title: str, *,
                log_scale: bool = False) -> None:
    """``key`` over the steps, one line per arm in its colour."""
    for arm in arms:
        points = [(r["step"], r[key]) for r in records[arm.name] if r.get(key) is not None]
        axis.plot([s for s, _ in points], [v for _, v in points], color=arm.colour,
                  label=arm.label, linewidth=1.3)
    if log_scale:
        axis.set_yscale("log")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("step")
    axis.grid(True, alpha=0.3)


@dataclass
class ExperimentReport:
    """What :func:`write_report` wrote."""

    directory: Path
    summary: dict[str, Any]
    findings: Findings
    html_path: Path
    plot_paths: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Always: an experiment's report is written only once every trajectory has finished."""
        return True

    def screen_summary(self) -> str:
        lines = [text_table(self.findings.table), ""]
        lines += [claim.line() for claim in self.findings.claims]
        lines += ["", f"Report: {self.html_path}"]
        return "\n".join(lines)


def _blocks(experiment: Experiment, config: ExperimentConfig, findings: Findings
            ) -> list[Block]:
    settings = ", ".join(f"{name} = {setting_text(value)}" for name, value in
                         config.identity().items() if name != "experiment")
    return [Text(f"{experiment.reference}."), Text(f"Claim: {experiment.claim}"),
            Text(f"Settings (samhess experiment {experiment.name}): {settings}.", note=True),
            Table(findings.table), Heading("Verdicts"), Verdicts(findings.claims),
            *(Text(note, note=True) for note in findings.notes), *findings.figures]


def write_report(directory: Path, experiment: Experiment, config: ExperimentConfig,
                 findings: Findings) -> ExperimentReport:
    """Write ``summary.json``, the PNGs, ``report.md`` and ``report.html`` into ``directory``,
    each through the directory's file list (:class:`~samhess.experiments.ownership.OwnedFiles`).

    Raises:
        RunDirectoryError: a file of one of those names is not samhess's; nothing is written.
    """
    summary = {"experiment": experiment.name, "reference": experiment.reference,
               "claim": experiment.claim, "settings": config.identity(),
               "results": findings.summary,
               "verdicts": [claim.to_dict() for claim in findings.claims]}
    blocks = _blocks(experiment, config, findings)
    files = {f"{PLOTS_DIR}/{figure.filename}": figure.png for figure in findings.figures}
    files[SUMMARY_FILE] = (runfiles.dumps_json(summary) + "\n").encode("utf-8")
    files["report.md"] = markdown(experiment.title, blocks).encode("utf-8")
    files["report.html"] = html_page(experiment.title, blocks).encode("utf-8")
    OwnedFiles(directory).write_files(files)
    paths = [directory / PLOTS_DIR / figure.filename for figure in findings.figures]
    return ExperimentReport(directory, summary, findings, directory / "report.html", paths)
