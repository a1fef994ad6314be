"""An experiment's report: ``summary.json``, ``report.md``, ``report.html`` and ``plots/``.

The pages are built from the experiment's :class:`~samhess.experiments.trajectories.experiment.
Findings` with the comparison report's pieces (:mod:`samhess.experiments.report`: the verdict
type, matplotlib's default style, PNGs without a date stamp, the same tables and page style), so
the same records give byte-identical files.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess.experiments import runfiles
from samhess.experiments.report import _CSS, _default_style, _figure, _png_bytes, _text_table
from samhess.experiments.runfiles import SUMMARY_FILE
from samhess.experiments.settings import markdown_row
from samhess.experiments.trajectories.arms import Arm
from samhess.experiments.trajectories.experiment import (
    Experiment, ExperimentConfig, Findings, Records,
)

__all__ = ["draw_png", "plot_series", "write_report", "ExperimentReport", "PLOTS_DIR"]

PLOTS_DIR = "plots"


def draw_png(draw: Callable[[Any], None], *, ncols: int = 1, nrows: int = 1,
             size: tuple[float, float] = (6.4, 4.2)) -> bytes:
    """A PNG of ``draw(axes)`` (``axes[row, column]``) in matplotlib's default style."""
    with _default_style():
        figure, axes = _figure(ncols, nrows, size=size)
        if nrows == 1 and ncols > 1:
            figure.subplots_adjust(bottom=0.13)  # room for the x labels of a single row
        draw(axes)
        return _png_bytes(figure)


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

    def screen_summary(self) -> str:
        lines = [_text_table(self.findings.table), ""]
        lines += [claim.line() for claim in self.findings.claims]
        lines += ["", f"Report: {self.html_path}"]
        return "\n".join(lines)


def _settings_line(config: ExperimentConfig) -> str:
    return ", ".join(f"{name} = {_value(value)}" for name, value in config.identity().items()
                     if name != "experiment")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(item) for item in value)
    return str(value)


def _markdown_table(rows: list[list[str]]) -> str:
    """The table in markdown, ``|`` inside a cell (``||g||``) escaped, numbers right-aligned."""
    lines = [markdown_row(*rows[0]), "| " + " | ".join(["---"] + ["---:"] * (len(rows[0]) - 1))
             + " |"]
    return "\n".join(lines + [markdown_row(*row) for row in rows[1:]])


def _markdown(experiment: Experiment, config: ExperimentConfig, findings: Findings) -> str:
    lines = [f"# {experiment.title}", "", f"{experiment.reference}.", "",
             f"Claim: {experiment.claim}", "",
             f"Settings (`samhess experiment {experiment.name}`): {_settings_line(config)}.", "",
             _markdown_table(findings.table), "", "## Verdicts", ""]
    lines += [f"- **{claim.verdict}**: {claim.claim}; {claim.evidence}." for claim in
              findings.claims]
    lines.append("")
    lines += [*findings.notes, ""] if findings.notes else []
    for figure in findings.figures:
        lines += [f"## {figure.caption}", "", f"![{figure.caption}]({PLOTS_DIR}/{figure.filename})",
                  ""]
    return "\n".join(lines)


def _html(experiment: Experiment, config: ExperimentConfig, findings: Findings) -> str:
    esc = html.escape
    table = findings.table
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(experiment.title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>",
             "<body>", f"<h1>{esc(experiment.title)}</h1>", f"<p>{esc(experiment.reference)}.</p>",
             f"<p>Claim: {esc(experiment.claim)}</p>",
             f'<p class="note">Settings (samhess experiment {esc(experiment.name)}): '
             f"{esc(_settings_line(config))}.</p>", "<table>",
             "<tr>" + "".join(f"<th>{esc(cell)}</th>" for cell in table[0]) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>"
              for row in table[1:]]
    parts += ["</table>", "<h2>Verdicts</h2>", "<ul>"]
    for claim in findings.claims:
        css = {True: "holds", False: "fails", None: ""}[claim.holds]
        parts.append(f'<li><span class="{css}">{claim.verdict}</span>: {esc(claim.claim)}; '
                     f"{esc(claim.evidence)}.</li>")
    parts.append("</ul>")
    parts += [f'<p class="note">{esc(note)}</p>' for note in findings.notes]
    for figure in findings.figures:
        encoded = base64.b64encode(figure.png).decode("ascii")
        parts += [f"<h2>{esc(figure.caption)}</h2>",
                  f'<img id="{esc(figure.filename[:-4])}" alt="{esc(figure.caption)}" '
                  f'src="data:image/png;base64,{encoded}">']
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(directory: Path, experiment: Experiment, config: ExperimentConfig,
                 findings: Findings) -> ExperimentReport:
    """Write ``summary.json``, the PNGs, ``report.md`` and ``report.html`` into ``directory``."""
    summary = {"experiment": experiment.name, "reference": experiment.reference,
               "claim": experiment.claim, "settings": config.identity(),
               "results": findings.summary,
               "verdicts": [claim.to_dict() for claim in findings.claims]}
    paths = []
    for figure in findings.figures:
        path = directory / PLOTS_DIR / figure.filename
        runfiles.write_bytes_atomic(path, figure.png)
        paths.append(path)
    runfiles.write_json_atomic(directory / SUMMARY_FILE, summary)
    runfiles.write_text_atomic(directory / "report.md", _markdown(experiment, config, findings))
    runfiles.write_text_atomic(directory / "report.html", _html(experiment, config, findings))
    return ExperimentReport(directory, summary, findings, directory / "report.html", paths)

