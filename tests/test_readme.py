"""README's Python examples run as printed, and what they print agrees with the library."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(section: str) -> str:
    """The one Python block of README's section ``## section``."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 1, f"section {section!r} holds {len(blocks)} Python blocks"
    return blocks[0]


def test_readme_sections_with_python_are_the_tested_ones():
    text = README.read_text(encoding="utf-8")
    assert text.count("```python") == 2


def test_readme_example_runs_and_sam_ratio_matches_its_first_order_prediction():
    result = subprocess.run(
        [sys.executable, "-c", _python_block("The library in one screen")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"ratio ([0-9.]+) \(first order predicts ([0-9.]+)\)", result.stdout)
    assert match, result.stdout
    measured, predicted = float(match.group(1)), float(match.group(2))
    # At rho = 0.05 on a batch of 128 the first-order prediction is within a few percent
    # (docs/theory.md, validity map); SAM must accelerate the sharp subspace.
    assert measured > 1.0
    assert abs(measured - predicted) / predicted < 0.05


@pytest.mark.slow
def test_readme_own_loop_example_tracks_and_samhess_report_renders_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _python_block("Your own model, your own loop")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "runs" / "my-loop"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(0, 301, 50))
    last = records[-1]
    assert result.stdout.strip() == (
        f"step 300: lambda_max {last['lambda_max']:.3f}, sharp/flat gain ratio {last['gain_ratio']:.3f}"
    )
    # SAM's step accelerates the sharp directions more than the flat ones on this network, as on
    # the main job's (README's table).
    assert np.median([r["gain_ratio"] for r in records[1:]]) > 1
    report = subprocess.run(
        [sys.executable, "-m", "samhess", "report", "runs/my-loop"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lambda_max"]["mean"] == last["lambda_max"]
    assert (out / "report.html").exists() and (out / "plots" / "curves.png").exists()
