"""Reports of a run or a comparison, rebuilt from the run files alone.

:func:`build_report` reads ``config.json``, ``metrics.jsonl`` and ``analysis/analysis.json``
of each run (:mod:`samhess.experiments.report_runs`) and writes, into the run's (or the
comparison's) directory:

* ``summary.json``: for a comparison, each optimizer's name mapped to its entry; for one run,
  the entry itself (:mod:`samhess.experiments.report_summary`);
* ``claims.json`` (comparisons): whether the seed note's claims hold on this task
  (:mod:`samhess.experiments.report_claims`);
* ``plots/*.png``: the figures over training (:mod:`samhess.experiments.report_figures`) and of
  the final models (:mod:`samhess.experiments.report_analysis_figures`), and
  ``plots/figures.json``, the numbers each figure draws;
* ``report.md`` (linking the PNGs) and ``report.html`` (the PNGs embedded, self-contained;
  :mod:`samhess.experiments.report_pages`), ending with the provenance of the runs and the
  configuration.

The output is a function of the input files only: no dates, no paths outside the directory,
no wall-clock times (they stay in each run's ``timing.json``), floats printed with fixed formats,
PNGs written without a software or date stamp. Rebuilding a report from the same files gives
byte-identical files, and so do two runs of one configuration in one environment.

The report holds the directory's lock while it writes, and writes every file through the
directory's manifest (:class:`~samhess.experiments.ownership.OwnedFiles`): it replaces only files
samhess wrote, and refuses to overwrite one of the user's.

An unfinished run or comparison (a run stopped before its last step or its final analysis, a
member not started) is reported as it stands, labelled at the top and per member, and every
verdict that would compare runs at different steps is withheld
(:mod:`samhess.experiments.report_completeness`). A part of a run's final analysis that failed is
listed with its error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess.errors import RunFileError
from samhess.experiments import runfiles
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.provenance import run_settings, same_environment
from samhess.experiments.report_analysis_figures import (
    plot_gains, plot_landscape, plot_spectrum, plot_taylor,
)
from samhess.experiments.report_claims import (
    Claim, ClaimEvidence, evaluate_claims, fmt, taylor_lines,
)
from samhess.experiments.report_completeness import (
    incomplete_members, incompleteness_banner, unequal_progress, withhold_unequal_progress,
)
from samhess.experiments.report_figures import (
    block_label, layer_table, plot_curves, plot_dynamics, plot_eigenvalues, plot_layers,
)
from samhess.experiments.report_pages import (
    PLOTS_DIR, Banner, Block, Bullets, Details, Heading, Image, Table, Text, Verdicts, html_page,
    markdown, setting_text, stat_cell, text_table,
)
from samhess.experiments.report_plotting import BAND_TEXT, Drawn, default_style
from samhess.experiments.report_runs import RunFiles, RunGroups, kind_of, label, read_groups
from samhess.experiments.report_summary import (
    convergence_entries, convergence_line, matched_entries, mean_std, summary_entry,
)
from samhess.experiments.runfiles import CLAIMS_FILE, FIGURES_FILE, SUMMARY_FILE

__all__ = ["Report", "build_report", "format_table", "format_run_summary",
           "analysis_error_lines", "FIGURES", "FIGURES_FILE", "CLAIMS_FILE"]

_COLUMNS = (
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("test_accuracy", "test accuracy", "{:.2%}"),
    ("lambda_max", "lambda_max", "{:.3f}"),
    ("hessian_trace", "Tr(H)", "{:.2f}"),
    ("sharp_flat_gain_ratio", "sharp/flat vs grad step", "{:.3f}"),
    ("ire_sharp_flat_gain_ratio_vs_base", "sharp/flat vs base", "{:.3f}"),
)


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file, its caption (given the number of seeds) and how it
    is drawn (``None`` when the runs hold nothing to draw)."""

    filename: str
    caption: Callable[[int], str]
    draw: Callable[[dict[str, list[RunFiles]]], Drawn | None]


def _seeds(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"


def _band(count: int) -> str:
    return "one seed, no band" if count == 1 else BAND_TEXT


#: The report's figures, in page order.
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("curves.png", lambda n: f"Curves over training ({_band(n)}, {_seeds(n)})",
               plot_curves),
    FigureSpec("dynamics.png", lambda n: "What the claims are about, over training: gain "
               f"ratios, the sharp share of the gradient, its norm ({_band(n)})", plot_dynamics),
    FigureSpec("eigenvalues.png", lambda n: f"Top Hessian eigenvalues over training ({_band(n)})",
               plot_eigenvalues),
    FigureSpec("layers.png", lambda n: "Per-layer curvature over training (mean over "
               f"{_seeds(n)})", plot_layers),
    FigureSpec("gains.png", lambda n: "Gains of the final step along the top eigenvectors, "
               f"with the predictions (every seed: {_seeds(n)})", plot_gains),
    FigureSpec("taylor.png", lambda n: f"Taylor error against rho (every seed: {_seeds(n)})",
               plot_taylor),
    FigureSpec("spectrum.png", lambda n: f"Final spectral density (every seed: {_seeds(n)})",
               plot_spectrum),
    FigureSpec("landscape.png", lambda n: "Loss around the final weights (1-D: "
               f"{_band(n)}; 2-D: mean over {_seeds(n)})", plot_landscape),
)


def format_table(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows of the summary table, header first."""
    rows = [["optimizer"] + [title for _, title, _ in _COLUMNS]]
    for name, entry in summary.items():
        row_name = name if entry.get("complete", True) else f"{name} (incomplete)"
        rows.append([row_name] + [stat_cell(entry[key], spec) for key, _, spec in _COLUMNS])
    return rows


def _task_line(config: dict[str, Any], seeds: list[int | None]) -> str:
    # A run tracked in the user's own loop (samhess.Tracker) leaves unknown values as null.
    what = " / ".join(str(config[key]) for key in ("dataset", "model")
                      if config.get(key) is not None)
    known = [str(seed) for seed in seeds if seed is not None]
    runs = f"{_seeds(len(known))} ({', '.join(known)}), " if known else ""
    batch = f" of batch {config['batch_size']}" if config.get("batch_size") is not None else ""
    layers = config.get("layer_track_every")
    per_layer = f" (per-layer curvature every {layers})" if layers else ""
    return (f"{what}, {runs}{config['steps']} steps{batch}, track every "
            f"{config['track_every']}{per_layer}, top-{config['top_k']} eigenvalues, Hutch++ "
            f"with {config['trace_matvecs']} matvecs, {config['dtype']}")


def _hyperparameters(name: str, config: dict[str, Any]) -> str:
    """The values of the hyperparameters the kind reads, in its order (a Tracker run's
    optimizer: the learning rate, momentum and weight decay its config holds)."""
    kind = kind_of(name)
    keys = ("lr", "momentum", "weight_decay") if kind is None else kind.reads
    return ", ".join(f"{key.replace('_', ' ')} {config[key]:g}"
                     for key in keys if config.get(key) is not None)


_EXPLANATION = (
    "Values are those of the last tracked step (mean ± sample std over seeds), except the "
    "sharp/flat gains: the median over the tracked steps after step 0. lambda_max and "
    "Tr(H) are the Hessian's top eigenvalue and trace of the mean loss on a fixed tracking batch. "
    "The sharp/flat gain is the optimizer's step measured on the span of the top Hessian "
    "eigenvectors, divided by the same on its orthogonal complement (the flat directions), each "
    "relative to a reference step. 'vs grad step': the reference is a plain gradient step with "
    "the same learning rate: 1 for SGD, above 1 where sharp directions are accelerated most "
    "(the seed note's picture of SAM), below 1 where flat ones are. 'vs base' (IRE kinds only): "
    "the reference is the step of IRE's own base optimizer (SGD, SAM or AdamW) from the same "
    "state, which isolates what IRE adds; IRE's claims are judged on it."
)
_CONVERGENCE_TITLE = "Does IRE reach its base optimizer's loss in fewer steps?"
_CONVERGENCE_NOTE = (
    "The IRE paper reports AdmIRE reaching AdamW's loss in about half the steps (Llama "
    "pretraining). Here: the first tracked step at which the IRE kind's train loss (mean over "
    "seeds) is at or below its base optimizer's final train loss, on the tracking grid."
)
_MATCHED_TITLE = "Flatness at matched train loss"
_MATCHED_NOTE = (
    "Cross-entropy curvature shrinks with the loss, so final values at different losses favour "
    "whichever optimizer trained further. Here every run is read where its train loss first "
    "reaches L* = {loss:.4f}, the lowest train loss every run of the comparison reached (the "
    "largest of the runs' lowest recorded losses); lambda_max, Tr(H) and the step are "
    "interpolated linearly in log loss between the two tracked steps around that crossing. "
    "Mean ± sample std over seeds. The 'is flatter' verdicts use these values."
)
_FIGURE_NOTES = {
    "curves.png": [
        "Dashed grey: 2/lr, the edge of stability of gradient descent (Cohen et al., ICLR 2021); "
        "dotted, in the optimizer's colour: SAM's edge lr lambda (1 + rho lambda / ||g||) = 2 "
        "(Long & Bartlett, JMLR 2024) with ||g|| of each record's tracking batch (mean over "
        "seeds); an IRE kind has its base optimizer's edge",
        "Test error is 100% minus the test accuracy, on a log scale so that the differences "
        "at the end of training show",
    ],
    "dynamics.png": [
        "The gain ratios are what the claims judge: above 1 the step moves sharp directions "
        "further than flat ones, relative to the reference step",
        "The share of ||g||^2 in the top-k eigenspace says how much of the gradient the sharp "
        "directions hold at all: where it is tiny, the sharp gain is a ratio of tiny numbers "
        "(docs/theory.md)",
    ],
    "layers.png": [
        "lambda_max and Tr(H) of each layer's diagonal block of the Hessian (the layer's "
        "parameters alone, the others held fixed); the blocks' traces add up to Tr(H), and each "
        "block's lambda_max is at most the whole Hessian's",
        "Colours on a log scale shared by the optimizers; mean over seeds",
    ],
    "gains.png": [
        "One panel per optimizer: each final model has its own eigenvectors and eigenvalues",
        "Filled markers: measured gains, one shape per seed; hollow markers at 0: the gain on "
        "the flat subspace; hollow markers elsewhere: the first-order prediction where it is one "
        "value per eigenvector (IRE's mask, ASAM's scaling); dashed lines: the prediction where "
        "it is a function of the eigenvalue (1 + rho lambda / ||g|| for SAM, 1 for SGD)",
    ],
    "landscape.png": [
        "The loss on the tracking batch at w + alpha v_1 (v_1 the unit top Hessian eigenvector, "
        "alpha a distance in parameter space) and at w + alpha d_1 + beta d_2, with d_1 and "
        "d_2 Gaussian directions rescaled filter by filter to the weights' filter norms (Li et "
        "al., NeurIPS 2018; biases left out)",
        "The 2-D panels share their contour levels (spaced in log loss); '+' marks the "
        "trained weights",
    ],
}


def _matched_table(summary: dict[str, dict[str, Any]],
                   matched: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["optimizer", "step reaching L*", "lambda_max at L*", "Tr(H) at L*",
             "lambda_max, last step", "Tr(H), last step"]]
    for name, entry in matched.items():
        rows.append([name, stat_cell(entry["step"], "{:.0f}"),
                     stat_cell(entry["lambda_max"], "{:.3f}"),
                     stat_cell(entry["hessian_trace"], "{:.2f}"),
                     stat_cell(summary[name]["lambda_max"], "{:.3f}"),
                     stat_cell(summary[name]["hessian_trace"], "{:.2f}")])
    return rows


def layer_summary(groups: dict[str, list[RunFiles]]) -> dict[str, list[dict[str, Any]]]:
    """Each optimizer's per-layer curvature at the last step every seed measured it: per
    block, ``lambda_max`` and ``hessian_trace`` (mean and std over seeds) and ``trace_share``
    (the block's share of the sum of the blocks' traces, mean over seeds)."""
    out = {}
    for name, runs in groups.items():
        table = layer_table(runs)
        if table is None:
            continue
        steps, blocks, values = table
        traces = values["hessian_trace"][:, -1, :]
        shares = traces / traces.sum(axis=1, keepdims=True)
        out[name] = [{
            "block": block["block"], "module": block["module"],
            "parameters": block["parameters"], "step": steps[-1],
            "lambda_max": mean_std(values["lambda_max"][:, -1, index].tolist()),
            "hessian_trace": mean_std(traces[:, index].tolist()),
            "trace_share": mean_std(shares[:, index].tolist()),
        } for index, block in enumerate(blocks)]
    return out


def _layer_rows(layers: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    rows = [["optimizer", "layer", "step", "lambda_max", "Tr(H)", "share of Tr(H)"]]
    for name, blocks in layers.items():
        for block in blocks:
            rows.append([name, block_label(block), str(block["step"]),
                         stat_cell(block["lambda_max"], "{:.3f}"),
                         stat_cell(block["hessian_trace"], "{:.2f}"),
                         stat_cell(block["trace_share"], "{:.1%}")])
    return rows


_PROVENANCE_ROWS = (
    ("samhess", "samhess"), ("git_commit", "git commit"), ("python", "Python"),
    ("torch", "torch"), ("numpy", "numpy"), ("platform", "platform"), ("device", "device"),
    ("torch_threads", "torch threads"), ("processes", "processes"),
)


def _git_text(environment: dict[str, Any]) -> str:
    commit = environment.get("git_commit")
    if commit is None:
        return "not run from a git checkout"
    modified = environment.get("git_modified")
    return commit + (" (tracked files modified)" if modified else "")


def provenance_rows(groups: dict[str, list[RunFiles]]) -> list[list[str]] | None:
    """The environments the runs were computed in, one column each, with the runs it holds
    (:mod:`samhess.experiments.provenance`); ``None`` when no run recorded one."""
    environments: list[dict[str, Any]] = []
    users: list[list[str]] = []
    for name, runs in groups.items():
        for run in runs:
            for entry in run.provenance:
                where = f"{name} seed {run.seed}"
                if entry.get("from_step"):
                    where += f" from step {entry['from_step']}"
                for index, known in enumerate(environments):
                    if same_environment(known, entry):
                        users[index].append(where)
                        break
                else:
                    environments.append(entry)
                    users.append([where])
    if not environments:
        return None
    total = sum(len(runs) for runs in groups.values())
    header = ["", *(f"environment {i + 1}" for i in range(len(environments)))]
    if len(environments) == 1 and len(users[0]) == total:
        header = ["", "every run"]
    rows = [header]
    for key, title in _PROVENANCE_ROWS:
        values = [_git_text(env) if key == "git_commit" else fmt(env.get(key), "{}")
                  for env in environments]
        rows.append([title, *values])
    if header[1] != "every run":
        rows.append(["runs", *("; ".join(names) for names in users)])
    return rows


def configuration_rows(config: dict[str, Any]) -> list[list[str]]:
    """Every resolved setting of a run, as stored in its config.json."""
    return [["setting", "value"]] + [[key, setting_text(value)]
                                     for key, value in run_settings(config).items()]


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    directory: Path
    summary: dict[str, Any]
    claims: list[Claim]
    table: list[list[str]]
    markdown_path: Path
    html_path: Path
    plot_paths: list[Path] = field(default_factory=list)
    convergence: list[str] = field(default_factory=list)
    #: The incompleteness banner (empty for a finished run or comparison).
    incomplete: list[str] = field(default_factory=list)
    analysis_errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every member ran to its last step and its final analysis."""
        return not self.incomplete

    def screen_summary(self) -> str:
        lines = [*self.incomplete, *([""] if self.incomplete else []), text_table(self.table)]
        if self.claims:
            lines += ["", *[claim.line() for claim in self.claims]]
        if self.convergence:
            lines += ["", *[f"{line}." for line in self.convergence]]
        if self.analysis_errors:
            lines += ["", *[f"Final analysis: {line}." for line in self.analysis_errors]]
        lines += ["", f"Report: {self.html_path}"]
        return "\n".join(lines)


def _draw(groups: dict[str, list[RunFiles]]) -> list[tuple[FigureSpec, Drawn]]:
    drawn = []
    with default_style():
        for spec in FIGURES:
            result = spec.draw(groups)
            if result is not None:
                drawn.append((spec, result))
    return drawn


def analysis_error_lines(groups: dict[str, list[RunFiles]]) -> list[str]:
    """One line per part of a final analysis that failed: member, part and error."""
    return [f"{run.optimizer} seed {run.seed}: {part} failed ({error})"
            for runs in groups.values() for run in runs
            for part, error in run.analysis_errors.items()]


_ANALYSIS_ERRORS_TITLE = "Parts of the final analysis that failed"


def _blocks(found: RunGroups, summary: dict[str, Any], claims: list[Claim],
            matched: dict[str, Any], convergence: list[str],
            figures: list[tuple[FigureSpec, Drawn]], layers: dict[str, Any],
            seeds: list[int], banner: list[str], errors: list[str]) -> list[Block]:
    groups = found.groups
    blocks: list[Block] = [Banner(banner[0], banner[1:])] if banner else []
    blocks += [
        Text(f"Task: {_task_line(found.config, seeds)}."),
        Bullets([f"{name}: {_hyperparameters(name, runs[0].config)}"
                 for name, runs in groups.items()]),
        Table(format_table(summary)),
        Text(_EXPLANATION, note=True),
    ]
    if claims:
        blocks += [Heading("Does the seed note's picture hold here?"), Verdicts(claims)]
    if matched:
        loss = next(iter(matched.values()))["train_loss"]
        blocks += [Heading(_MATCHED_TITLE), Text(_MATCHED_NOTE.format(loss=loss), note=True),
                   Table(_matched_table(summary, matched))]
    if convergence:
        blocks += [Heading(_CONVERGENCE_TITLE), Text(_CONVERGENCE_NOTE, note=True),
                   Bullets([f"{line}." for line in convergence])]
    if errors:
        blocks += [Heading(_ANALYSIS_ERRORS_TITLE), Bullets([f"{line}." for line in errors])]
    notes = {**_FIGURE_NOTES, "taylor.png": taylor_lines(groups)}
    for spec, drawn in figures:
        blocks.append(Image(spec.filename, spec.caption(len(seeds)), drawn.png,
                            notes.get(spec.filename, [])))
        if spec.filename == "layers.png" and layers:
            blocks += [Text("Per-layer curvature at the last step every seed measured it (mean "
                            "± sample std over seeds):", note=True),
                       Table(_layer_rows(layers))]
    provenance = provenance_rows(groups)
    blocks.append(Heading("Provenance"))
    blocks.append(Table(provenance, numeric=False) if provenance is not None
                  else Text("The runs recorded no provenance.", note=True))
    what = ("the first member run's; the optimizer, seed and per-optimizer lr and rho differ "
            "between members as listed at the top" if found.is_compare else "the run's")
    blocks.append(Details(f"Configuration ({what})",
                          Table(configuration_rows(found.config), numeric=False)))
    return blocks


def build_report(directory: str | Path) -> Report:
    """Write summary.json, claims.json (comparisons), the figures and figures.json, report.md and
    report.html.

    Holds the directory's lock while it writes, and writes only over files samhess wrote.

    Raises:
        RunFileError: the run files are missing or malformed.
        RunDirectoryError: another process writes the directory, or a file the report would
            replace is not samhess's (nothing is written then).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunFileError(f"{directory} is not a directory")
    with run_directory_lock(directory, "samhess report"):
        return _build_report(directory)


def _build_report(directory: Path) -> Report:
    found = read_groups(directory)
    groups = found.groups
    seeds = sorted({run.seed for runs in groups.values() for run in runs},
                   key=lambda seed: -1 if seed is None else seed)
    incomplete = incomplete_members(found)
    summary = {name: summary_entry(runs) for name, runs in groups.items()}
    for name, _ in found.not_started:
        if name in summary:
            summary[name]["complete"] = False
    matched = matched_entries(groups) if found.is_compare else {}
    for name, entry in matched.items():
        summary[name]["at_matched_train_loss"] = entry
    claims = (withhold_unequal_progress(evaluate_claims(ClaimEvidence(summary, groups, matched)),
                                        found) if found.is_compare else [])
    convergence = []
    if found.is_compare:
        for name, entry in convergence_entries(groups).items():
            summary[name]["steps_to_base_final_loss"] = entry
            reason = unequal_progress((name, entry["base"]), found)
            convergence.append(convergence_line(name, entry) if reason is None else
                               f"{label(name)} against {label(entry['base'])}: withheld, "
                               f"{reason}")
    layers = layer_summary(groups)
    for name, blocks in layers.items():
        summary[name]["layers"] = blocks
    figures = _draw(groups)
    table = format_table(summary)
    banner = incompleteness_banner("comparison" if found.is_compare else "run", incomplete)
    errors = analysis_error_lines(groups)
    blocks = _blocks(found, summary, claims, matched, convergence, figures, layers, seeds,
                     banner, errors)

    def json_bytes(value: Any) -> bytes:
        return (runfiles.dumps_json(value) + "\n").encode("utf-8")

    files = {f"{PLOTS_DIR}/{spec.filename}": drawn.png for spec, drawn in figures}
    files[f"{PLOTS_DIR}/{FIGURES_FILE}"] = json_bytes(
        {spec.filename: drawn.data for spec, drawn in figures})
    files[SUMMARY_FILE] = json_bytes(summary if found.is_compare
                                     else next(iter(summary.values())))
    if found.is_compare:
        files[CLAIMS_FILE] = json_bytes([c.to_dict() for c in claims])
    files["report.md"] = markdown(found.title, blocks).encode("utf-8")
    files["report.html"] = html_page(found.title, blocks).encode("utf-8")
    OwnedFiles(directory).write_files(files)
    return Report(directory=directory, summary=summary, claims=claims, table=table,
                  markdown_path=directory / "report.md", html_path=directory / "report.html",
                  plot_paths=[directory / PLOTS_DIR / spec.filename for spec, _ in figures],
                  convergence=convergence, incomplete=banner, analysis_errors=errors)


def format_run_summary(out: Path, summary: dict[str, Any], report_path: Path,
                       resumed_from: int | None, analysis_errors: Sequence[str] = ()) -> str:
    """The lines ``samhess run`` prints at the end."""
    lines = []
    if resumed_from is not None:
        lines.append(f"Resumed from step {resumed_from}.")
    lines.append(text_table(format_table(summary)))
    if analysis_errors:
        lines += ["", *[f"Final analysis: {line}." for line in analysis_errors]]
    lines += ["", f"Run files: {out}", f"Report: {report_path}"]
    return "\n".join(lines)
