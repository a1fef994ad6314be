"""The optimizer registry: every kind builds what it declares, reads its hyperparameters, and runs
through the command line; unknown names fail, never fall back to another optimizer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from samhess.cli import main
from samhess.experiments.config import build_run_config, optimizers_markdown, settings_markdown
from samhess.experiments.optimizer_kinds import (
    HYPERPARAMETERS,
    OPTIMIZER_KINDS,
    OptimizerKind,
    StepProtocol,
    build_optimizer,
    optimizer_kind,
    register,
)
from samhess.optim import ASAM, BSAM, GSAM, IRE, MSAM, RST, SAM, USAM, WSAM, FriendlySAM, LookSAM

from .conftest import tiny_cli_args

#: What each name must build, written here independently of the registry: (outer class,
#: wrapped class or None, innermost torch class). A registered kind missing here fails the test.
EXPECTED = {
    "sgd": (torch.optim.SGD, None, torch.optim.SGD),
    "sam": (SAM, None, torch.optim.SGD),
    "usam": (USAM, None, torch.optim.SGD),
    "asam": (ASAM, None, torch.optim.SGD),
    "ire": (IRE, torch.optim.SGD, torch.optim.SGD),
    "sam-ire": (IRE, SAM, torch.optim.SGD),
    "adamw": (torch.optim.AdamW, None, torch.optim.AdamW),
    "admire": (IRE, torch.optim.AdamW, torch.optim.AdamW),
    "gsam": (GSAM, None, torch.optim.SGD),
    "wsam": (WSAM, None, torch.optim.SGD),
    "friendly-sam": (FriendlySAM, None, torch.optim.SGD),
    "looksam": (LookSAM, None, torch.optim.SGD),
    "msam": (MSAM, None, torch.optim.SGD),
    "rst": (RST, None, torch.optim.SGD),
    "bsam": (BSAM, None, None),  # its own update: no torch optimizer underneath
}

#: A value of each hyperparameter unlike its default, and where the built optimizer keeps it.
_PROBE_VALUES = {"lr": 0.0123, "momentum": 0.45, "weight_decay": 0.0031, "rho": 0.077,
                 "kappa": 2.5, "gamma": 0.35, "refresh_every": 7, "start_step": 3,
                 "gsam_alpha": 0.31, "wsam_gamma": 0.77, "friendly_sigma": 0.6,
                 "friendly_lambda": 0.55, "looksam_k": 3, "looksam_alpha": 0.45, "msam_m": 2,
                 "rst_p": 0.3, "bsam_damping": 0.2, "bsam_s_init": 2.5}
#: Where a variant keeps its own hyperparameter: its attribute, or a group key.
_OWN = {"gsam_alpha": "alpha", "wsam_gamma": "gamma", "friendly_sigma": "sigma",
        "friendly_lambda": "lmbda", "looksam_k": "k", "looksam_alpha": "alpha", "msam_m": "m",
        "rst_p": "p"}
_GROUP_KEYS = {"bsam_damping": "damping", "bsam_s_init": "s_init"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def _innermost(optimizer):
    while True:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "base_optimizer", None)
        if inner is None:
            return optimizer
        optimizer = inner


def _kept_value(optimizer, name: str):
    if isinstance(optimizer, IRE) and name in ("kappa", "gamma", "refresh_every", "start_step"):
        return getattr(optimizer, name)
    if name in _OWN:
        return getattr(optimizer, _OWN[name])
    return optimizer.param_groups[0][_GROUP_KEYS.get(name, name)]


def test_every_kind_has_an_expected_build():
    assert set(EXPECTED) == set(OPTIMIZER_KINDS)


@pytest.mark.parametrize("name", list(OPTIMIZER_KINDS))
def test_kind_builds_its_optimizer_with_its_hyperparameters(name):
    kind = optimizer_kind(name)
    outer, wrapped, innermost = EXPECTED[name]
    probe = {key: _PROBE_VALUES[key] for key in kind.reads}
    optimizer = build_optimizer(name, _model(), {**probe, "num_data": 10})
    assert type(optimizer) is outer
    if wrapped is not None:
        assert type(optimizer.optimizer) is wrapped
        assert kind.base is not None
        assert type(build_optimizer(kind.base, _model(), {"num_data": 10})) is wrapped
    if innermost is not None:
        assert type(_innermost(optimizer)) is innermost
    for key, value in probe.items():
        assert _kept_value(optimizer, key) == pytest.approx(value), key
    # the step protocol matches what the object offers
    perturbs = callable(getattr(optimizer, "first_step", None)) and not (
        isinstance(optimizer, IRE) and not hasattr(optimizer.optimizer, "first_step"))
    assert kind.two_pass == perturbs
    assert (kind.protocol is StepProtocol.MICRO_BATCH) == hasattr(optimizer, "micro_batches")
    # the kind's own defaults are what a config resolves to
    config = build_run_config({}, {"optimizer": name})
    for setting in HYPERPARAMETERS:
        if setting.per_optimizer:
            assert getattr(config, setting.name) == kind.defaults.get(setting.name,
                                                                    setting.default)


def test_unknown_names_fail_closed():
    with pytest.raises(ValueError, match="optimizer 'lion' is not one of sgd, sam"):
        optimizer_kind("lion")
    with pytest.raises(ValueError, match="optimizer = 'lion' is invalid: must be one of"):
        build_run_config({"optimizer": "lion"}, {})
    with pytest.raises(ValueError, match="registered twice"):
        register(optimizer_kind("sgd"))
    with pytest.raises(ValueError, match="refers to 'nothing'"):
        register(OptimizerKind(name="x", label="X", colour="#000000", summary="", build=None,
                               reads=(), base="nothing"))
    with pytest.raises(ValueError, match="undeclared hyperparameters"):
        register(OptimizerKind(name="x", label="X", colour="#000000", summary="", build=None,
                               reads=("alpha",)))
    assert "x" not in OPTIMIZER_KINDS


def test_docs_tables_are_generated_from_the_declarations():
    """docs/cli.md holds the tables the settings and the registry generate, unchanged."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert settings_markdown() in text
    assert optimizers_markdown() in text


def test_help_lists_every_kind(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    shown = capsys.readouterr().out
    for kind in OPTIMIZER_KINDS.values():
        assert f"  {kind.name} " in shown and kind.summary in shown


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZER_KINDS))
def test_every_kind_runs_through_the_command_line(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--optimizer", name, "--out", "run", "--quiet",
            *tiny_cli_args(steps=4, track_every=2)]
    assert main(args) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optimizer"] == name
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    kind = optimizer_kind(name)
    vs_base = [r["gain_ratio_vs_base"] for r in records]
    assert (kind.base is not None) == all(v is not None for v in vs_base)
    report = (tmp_path / "run" / "report.md").read_text()
    assert kind.label in report


@pytest.mark.slow
def test_a_comparison_of_the_variants_states_each_kinds_claims(tmp_path, monkeypatch, capsys):
    """Every SAM variant beside SGD in one comparison: each has its gains in the summary and
    the claims its kind declares in claims.json."""
    from samhess.experiments.optimizer_kinds import ClaimKind

    names = ["sgd", "sam", "gsam", "wsam", "friendly-sam", "looksam", "msam", "rst", "bsam"]
    monkeypatch.chdir(tmp_path)
    args = ["compare", "--optimizers", ",".join(names), "--seeds", "1", "--out", "cmp", "--quiet",
            *tiny_cli_args(steps=4, track_every=2)]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert list(summary) == names
    assert all(summary[name]["sharp_flat_gain_ratio"]["mean"] is not None for name in names)
    claims = [claim["claim"] for claim in
              json.loads((tmp_path / "cmp" / "claims.json").read_text())]
    for name in names[1:]:
        kind = optimizer_kind(name)
        stated = [text for text in claims if text.startswith(kind.label + " ")]
        expected = {ClaimKind.SHARP_FIRST, ClaimKind.FLATTER_THAN_REFERENCE} & set(kind.claims)
        assert len(stated) == len(expected), (name, stated)
