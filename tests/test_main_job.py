"""README's main job: plain ``samhess compare`` runs end to end, and README's table is its output.

The README table must come from today's code. This test runs the default comparison and checks
every figure of README's table except the wall-clock column, and the numbers of its verdict on
flatness at matched train loss, against the fresh run: a change that moves the results without
updating README fails here.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Same code, seeds and thread count give bit-identical runs on one machine (tests/experiments);
# the tolerance only allows for another CPU's floating-point kernels over 1000 training steps.
RELATIVE_TOLERANCE = 0.05


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def _readme_flatness_verdict() -> tuple[float, float, float]:
    """The matched loss and SAM's and SGD's lambda_max there, as README states them."""
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    match = re.search(r"SAM is flatter than SGD at matched train loss: where the train loss first "
                      r"reaches (\d\.\d+) \(the lowest loss every run reached\), lambda_max is "
                      r"(\d+\.\d+) against (\d+\.\d+)", text)
    assert match, "README states no flatness verdict at matched train loss"
    return tuple(float(value) for value in match.groups())


def _readme_table() -> tuple[list[str], dict[str, list[str]]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## What the main job shows", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    body = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        body[cells[0]] = cells[1:]
    return header, body


@pytest.mark.slow
def test_default_compare_reproduces_readme_table_and_its_verdicts(tmp_path):
    out = tmp_path / "compare"
    result = subprocess.run(
        [sys.executable, "-m", "samhess", "compare", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    claims = json.loads((out / "claims.json").read_text())
    assert [c["holds"] for c in claims] == [True] * len(claims), claims
    flatter = next(c["evidence"] for c in claims if c["claim"].startswith("SAM is flatter"))
    found = re.search(r"lambda_max (\d+\.\d+) \(SAM\) vs (\d+\.\d+) \(SGD\) where the train "
                      r"loss first reaches (\d\.\d+)", flatter)
    sam, sgd, loss = (float(value) for value in found.groups())
    assert _readme_flatness_verdict() == pytest.approx((loss, sam, sgd), rel=RELATIVE_TOLERANCE)
    for name in ("report.md", "report.html", "summary.json"):
        assert (out / name).is_file()

    report = (out / "report.md").read_text(encoding="utf-8")
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| optimizer |"))
    fresh = []  # the summary table: the report's first table, up to the line after it
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        fresh.append(line)
    fresh_header = [cell.strip() for cell in fresh[0].strip("|").split("|")]
    readme_header, readme_rows = _readme_table()
    assert fresh_header == readme_header
    for line in fresh[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name, values = cells[0], cells[1:]
        assert name in readme_rows, f"README's table has no row for {name}"
        for column, (got, printed) in enumerate(zip(values, readme_rows[name])):
            if printed == "n/a":
                assert got == "n/a"
                continue
            for g, p in zip(_numbers(got), _numbers(printed), strict=True):
                assert g == pytest.approx(p, rel=RELATIVE_TOLERANCE, abs=1e-3), (
                    f"{name}, {readme_header[column + 1]}: README says {printed}, run gives {got}"
                )
