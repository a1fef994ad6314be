"""A report's page as a list of blocks, rendered to Markdown and to one self-contained HTML file.

The blocks (:class:`Banner`, :class:`Heading`, :class:`Text`, :class:`Bullets`,
:class:`Verdicts`, :class:`Table`, :class:`Image`, :class:`Details`) say what the page holds;
:func:`markdown` and :func:`html_page` say how it looks. The HTML embeds every PNG (``data:``
URIs), loads nothing, runs no script, and keeps table cells on one line (a mean and its spread
are joined by non-breaking spaces) in a page that fits 1280 pixels.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from samhess.experiments.report_claims import Claim

__all__ = ["Banner", "Heading", "Text", "Bullets", "Verdicts", "Table", "Image", "Details", "Block",
           "markdown", "html_page", "text_table", "setting_text", "PLOTS_DIR"]

PLOTS_DIR = "plots"
_NBSP = "\u00a0"


@dataclass
class Banner:
    """A warning set apart at the top of the page: a headline and one line per item (an
    unfinished report's members)."""

    headline: str
    lines: list[str]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    note: bool = False


@dataclass
class Bullets:
    lines: list[str]


@dataclass
class Verdicts:
    claims: list[Claim]


@dataclass
class Table:
    """Rows of cells, the header first; the first column is left-aligned, the others right
    (numbers) or left (``numeric=False``: words)."""

    rows: list[list[str]]
    numeric: bool = True


@dataclass
class Image:
    filename: str
    caption: str
    png: bytes
    notes: list[str] = field(default_factory=list)


@dataclass
class Details:
    """A table shown folded in HTML (a ``<details>`` element) and in full in Markdown."""

    summary: str
    table: Table


Block = Banner | Heading | Text | Bullets | Verdicts | Table | Image | Details


def _markdown_cell(cell: str) -> str:
    return cell.replace("|", "\\|")


def _markdown_table(table: Table) -> list[str]:
    rows = table.rows
    rule = "---:" if table.numeric else "---"
    lines = ["| " + " | ".join(_markdown_cell(c) for c in rows[0]) + " |",
             "| " + " | ".join(["---"] + [rule] * (len(rows[0]) - 1)) + " |"]
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows[1:]]
    return lines


def markdown(title: str, blocks: list[Block]) -> str:
    """The page as Markdown (images linked from ``plots/``)."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Banner):
            lines += [f"> **{block.headline}.**", ">", *(f"> - {line}" for line in block.lines),
                      ""]
        elif isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {line}" for line in block.lines] + [""]
        elif isinstance(block, Verdicts):
            lines += [f"- **{c.verdict}**: {c.claim}. {c.evidence}." for c in block.claims]
            lines.append("")
        elif isinstance(block, Table):
            lines += _markdown_table(block) + [""]
        elif isinstance(block, Image):
            lines += [f"## {block.caption}", "",
                      f"![{block.caption}]({PLOTS_DIR}/{block.filename})", ""]
            if block.notes:
                lines += [*(f"- {line}." for line in block.notes), ""]
        elif isinstance(block, Details):
            lines += [block.summary + ":", ""] + _markdown_table(block.table) + [""]
        else:  # pragma: no cover - every block type is rendered above
            raise TypeError(f"unknown block {type(block).__name__}")
    return "\n".join(lines).rstrip("\n") + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 74em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child, table.words td, table.words th { text-align: left; }
th { background: #f3f3f3; }
.holds { color: #1a7f37; font-weight: bold; }
.fails { color: #b3261e; font-weight: bold; }
.withheld { color: #8a6d00; font-weight: bold; }
div.incomplete { border: 2px solid #b3261e; padding: 0 1em; margin: 1em 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
p.note { color: #555; font-size: 0.92em; }
details { margin: 1em 0; }
summary { cursor: pointer; }
""".strip()


def _cell_html(cell: str) -> str:
    # A mean and its spread stay together: "0.0189 ± 0.0018" never breaks at the sign.
    return html.escape(cell).replace(" ± ", f"{_NBSP}±{_NBSP}")


def _table_html(table: Table) -> list[str]:
    rows = table.rows
    opening = "<table>" if table.numeric else '<table class="words">'
    parts = [opening, "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>"
              for row in rows[1:]]
    parts.append("</table>")
    return parts


def _verdict_html(claim: Claim) -> str:
    css = "withheld" if claim.withheld else {True: "holds", False: "fails", None: ""}[claim.holds]
    return (f'<li><span class="{css}">{claim.verdict}</span>: {html.escape(claim.claim)}. '
            f"{html.escape(claim.evidence)}.</li>")


def html_page(title: str, blocks: list[Block]) -> str:
    """The page as one self-contained HTML file (the PNGs embedded)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Banner):
            parts += ['<div class="incomplete">', f"<p><strong>{esc(block.headline)}.</strong></p>",
                      "<ul>", *(f"<li>{esc(line)}</li>" for line in block.lines), "</ul>",
                      "</div>"]
        elif isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            css = ' class="note"' if block.note else ""
            parts.append(f"<p{css}>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts += ["<ul>", *(f"<li>{esc(line)}</li>" for line in block.lines), "</ul>"]
        elif isinstance(block, Verdicts):
            parts += ["<ul>", *(_verdict_html(claim) for claim in block.claims), "</ul>"]
        elif isinstance(block, Table):
            parts += _table_html(block)
        elif isinstance(block, Image):
            encoded = base64.b64encode(block.png).decode("ascii")
            parts += [f"<h2>{esc(block.caption)}</h2>",
                      f'<img id="{esc(block.filename[:-4])}" alt="{esc(block.caption)}" '
                      f'src="data:image/png;base64,{encoded}">']
            if block.notes:
                parts += ["<ul>", *(f"<li>{esc(line)}.</li>" for line in block.notes), "</ul>"]
        elif isinstance(block, Details):
            parts += ["<details>", f"<summary>{esc(block.summary)}</summary>",
                      *_table_html(block.table), "</details>"]
        else:  # pragma: no cover - every block type is rendered above
            raise TypeError(f"unknown block {type(block).__name__}")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def text_table(rows: list[list[str]]) -> str:
    """A table for the terminal: columns padded, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def setting_text(value: Any) -> str:
    """A setting's value as the pages state it: floats in ``:g``, lists joined by commas,
    switches ``on``/``off``, an unset value ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def stat_cell(stat: dict[str, Any] | None, spec: str) -> str:
    """``mean ± std`` in ``spec`` (the spread left out when zero), or ``n/a``."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = spec.format(stat["mean"])
    if stat.get("std"):
        text += " ± " + spec.format(stat["std"])
    return text
