"""docs/integrations.md: every python example runs as printed and prints the output shown under it."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
EXAMPLES = re.findall(r"```python\n(.*?)```\n\n```text\n(.*?)```",
                      DOC.read_text(encoding="utf-8"), flags=re.S)
NUMBER = re.compile(r"-?\d+\.\d+")


def test_every_python_block_has_its_output_shown():
    assert len(EXAMPLES) == len(re.findall(r"```python\n", DOC.read_text(encoding="utf-8"))) == 4


def agrees(printed: str, shown: str) -> bool:
    """Same text; decimals within 2% (the examples' losses depend on the CPU's float kernels)."""
    if NUMBER.sub("#", printed) != NUMBER.sub("#", shown):
        return False
    return all(math.isclose(float(a), float(b), rel_tol=0.02)
               for a, b in zip(NUMBER.findall(printed), NUMBER.findall(shown)))


@pytest.mark.slow
@pytest.mark.parametrize("code,shown", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_example_prints_what_the_page_shows(code, shown, tmp_path):
    if "pytorch_lightning" in code:
        pytest.importorskip("pytorch_lightning", reason="the integrations extra is not installed")
    if "transformers" in code:
        pytest.importorskip("transformers", reason="the integrations extra is not installed")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-len(shown.strip().splitlines()):]
    for line, expected in zip(printed, shown.strip().splitlines()):
        assert agrees(line, expected), (line, expected)
