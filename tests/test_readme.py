"""README's library example runs as printed, and what it prints agrees with the library."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_example_runs_and_sam_ratio_matches_its_first_order_prediction():
    blocks = _python_blocks()
    assert len(blocks) == 1
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"ratio ([0-9.]+) \(first order predicts ([0-9.]+)\)", result.stdout)
    assert match, result.stdout
    measured, predicted = float(match.group(1)), float(match.group(2))
    # At rho = 0.05 on a batch of 128 the first-order prediction is within a few percent
    # (docs/theory.md, validity map); SAM must accelerate the sharp subspace.
    assert measured > 1.0
    assert abs(measured - predicted) / predicted < 0.05
