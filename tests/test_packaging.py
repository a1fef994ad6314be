"""Packaging: the wheel ships py.typed, the annotations hold under mypy --strict for a user's
script, the version has one source, and ``import samhess`` imports no training framework."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import samhess

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("pytorch_lightning", "lightning", "lightning_fabric", "transformers", "accelerate")

USER_SCRIPT = '''\
"""A user's script: samhess's optimizers, curvature and a scheduler, fully annotated."""

import functools

import torch
from torch import nn

from samhess.curvature import HessianOperator, eigenpairs, fisher_diagonal, trace
from samhess.optim import IRE, SAM, disable_running_stats

model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
loss_fn = nn.CrossEntropyLoss()
x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
params = list(model.parameters())

sgd = functools.partial(torch.optim.SGD, momentum=0.9)
optimizer = IRE(SAM(params, sgd, rho=0.05, lr=0.1), kappa=1.0, gamma=0.5)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=10)
for _ in range(3):
    if optimizer.needs_refresh():
        optimizer.update_mask(fisher_diagonal(model, loss_fn, (x, y), params))
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    with disable_running_stats(model):
        loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)
    scheduler.step()

top = eigenpairs(HessianOperator(model, loss_fn, (x, y)), k=2)
largest: float = float(top.eigenvalues[0])
estimate = trace(HessianOperator(model, loss_fn, (x, y)), num_matvecs=9)
print(largest, estimate.estimate)
'''


def test_import_samhess_imports_no_training_framework():
    probe = ("import sys, samhess, samhess.optim, samhess.curvature, samhess.analysis, "
             "samhess.integrations, samhess.experiments, samhess.cli\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_an_integration_module_imports_its_framework():
    """The probe above can fail: importing the integration does pull its framework in."""
    pytest.importorskip("pytorch_lightning", reason="the integrations extra is not installed")
    probe = ("import sys, samhess.integrations.lightning\n"
             "print('pytorch_lightning' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "True"


def test_the_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)
    assert 'dynamic = ["version"]' in project
    assert 'version = { attr = "samhess.__version__" }' in pyproject
    assert importlib.metadata.version("samhess") == samhess.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    first_release = re.search(r"^## (\S+)", changelog, flags=re.M)
    assert first_release and first_release.group(1) == samhess.__version__


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_corpus(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True, text=True)
    (wheel,) = tmp_path.glob("samhess-*.whl")
    assert wheel.name.startswith(f"samhess-{samhess.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"samhess-{samhess.__version__}.dist-info/METADATA").decode()
    assert {"samhess/py.typed", "samhess/experiments/corpus/commonplace.txt",
            "samhess/integrations/lightning.py", "samhess/integrations/transformers.py"} <= names
    assert "Provides-Extra: integrations" in metadata
    assert re.search(r"^Requires-Dist: pytorch-lightning.*extra == \"integrations\"", metadata,
                     flags=re.M)


@pytest.mark.slow
def test_a_user_script_passes_mypy_strict_and_a_planted_error_is_caught(tmp_path):
    pytest.importorskip("mypy", reason="mypy comes with the test extra")
    good = tmp_path / "user_script.py"
    good.write_text(USER_SCRIPT, encoding="utf-8")
    planted = tmp_path / "planted.py"
    planted.write_text(USER_SCRIPT.replace("k=2)", 'k="2")'), encoding="utf-8")
    assert planted.read_text() != USER_SCRIPT
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", str(good), str(planted)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("planted.py:29: error: Argument \"k\" to \"eigenpairs\" has "
                                "incompatible type \"str\"; expected \"int\"")
