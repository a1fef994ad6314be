"""Make ``curvature_reference`` (models and dense references) importable by the test modules.

Tests run with ``--import-mode=importlib``, which puts no test folder on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "curvature_reference", Path(__file__).resolve().parent / "curvature_reference.py"
)
_module = importlib.util.module_from_spec(_spec)
sys.modules["curvature_reference"] = _module
_spec.loader.exec_module(_module)
