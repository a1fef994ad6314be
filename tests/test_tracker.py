"""``samhess.Tracker`` in hand-written training loops.

Asserted: each record equals the curvature computed in the same loop at the same step
(``eigenpairs``, ``trace``, ``sharp_flat_gains``, and the dense Hessian's top eigenvalues); a loop
with a tracker ends bit-identical to the same loop without one (parameters, BatchNorm buffers,
gradients, optimizer state, every RNG); ``samhess report`` renders the directory; bad input is
refused before anything is touched, and a record that fails leaves everything as it was.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from token_models import make_transformer, token_batch
from torch import nn

import samhess
from samhess.cli import main
from samhess.analysis import sharp_flat_gains
from samhess.curvature import HessianOperator, TokenCrossEntropy, dense_hessian, eigenpairs, fisher_diagonal, trace
from samhess.optim import IRE, SAM, disable_running_stats


def data(seed: int = 0, size: int = 96):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 6, generator=generator, dtype=torch.float64)
    y = (x[:, :3].sum(dim=1) > 0).long() + (x[:, 3] > 0.5).long()
    return x, y


def make_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(0.2), nn.Linear(10, 3)
    ).double()


def make_optimizer(model: nn.Module):
    inner = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    return IRE(inner, kappa=1.0, gamma=0.5, refresh_every=4)


def train(model, optimizer, loss_fn, x, y, steps, tracker=None, check=None):
    """A loop as users write it: SAM's two passes, IRE's mask refresh, dropout and BatchNorm."""
    mask_generator = torch.Generator().manual_seed(11)
    model.train()
    for step in range(steps):
        rows = torch.randint(0, len(x), (16,))
        if optimizer.needs_refresh():
            optimizer.update_mask(fisher_diagonal(model, loss_fn, (x[rows], y[rows]), generator=mask_generator))
        loss = loss_fn(model(x[rows]), y[rows])
        loss.backward()
        optimizer.first_step(zero_grad=True)
        with disable_running_stats(model):
            loss_fn(model(x[rows]), y[rows]).backward()
        optimizer.second_step(zero_grad=False)  # leave gradients for the tracker to preserve
        if tracker is not None:
            record = tracker.record(step, train_loss=loss)
            if record is not None and check is not None:
                check(step, record)


def everything(model, optimizer) -> list:
    tensors = [t.clone() for t in model.state_dict().values()]
    tensors += [p.grad.clone() for p in model.parameters()]
    for o in (optimizer, optimizer.optimizer, optimizer.optimizer.base_optimizer):
        tensors += [v.clone() for s in o.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    tensors += [torch.get_rng_state(), torch.tensor(np.random.get_state()[1])]
    return tensors + [random.getstate(), [m.training for m in model.modules()]]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(a, b)
    )


def test_records_equal_the_curvature_computed_in_the_loop_and_the_report_renders(tmp_path):
    x, y = data()
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    tracking = (x[:48], y[:48])
    params = list(model.parameters())
    checked = []

    def check(step, record):
        H = HessianOperator(model, loss_fn, tracking, params=params)
        top = eigenpairs(H, 3, seed=0)
        assert record["eigenvalues"] == pytest.approx(top.eigenvalues.tolist(), rel=1e-12)
        assert record["lambda_max"] == record["eigenvalues"][0]
        if step == 12:
            dense = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, tracking)).flip(0)[:3]
            assert record["eigenvalues"] == pytest.approx(dense.tolist(), rel=1e-7)
        estimate = trace(H, 20, method="hutch++", seed=0)
        assert record["hessian_trace"] == pytest.approx(estimate.estimate, rel=1e-12)
        assert record["hessian_trace_stderr"] == pytest.approx(estimate.stderr, rel=1e-12)
        gains = sharp_flat_gains(model, loss_fn, tracking, optimizer, k=3, params=params, sharp=top)
        assert record["gain_ratio"] == pytest.approx(gains.ratio, rel=1e-12)
        base = sharp_flat_gains(model, loss_fn, tracking, optimizer, k=3, reference=optimizer.optimizer,
                                params=params, sharp=top)
        assert record["gain_ratio_vs_base"] == pytest.approx(base.ratio, rel=1e-12)
        checked.append(step)

    out = tmp_path / "mine"
    with samhess.Tracker(out, model, loss_fn, tracking, every=4, top_k=3, trace_matvecs=20,
                         optimizer=optimizer) as tracker:
        train(model, optimizer, loss_fn, x, y, 13, tracker, check)
    assert checked == [0, 4, 8, 12]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == checked
    assert all(r["train_loss"] is not None and r["test_loss"] is None for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "IRE(SAM(SGD))" and config["steps"] == 12 and config["lr"] == 0.1

    assert main(["report", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lambda_max"]["mean"] == records[-1]["lambda_max"]
    assert summary["sharp_flat_gain_ratio"]["mean"] == pytest.approx(
        float(np.median([r["gain_ratio"] for r in records[1:]])), rel=1e-12)
    assert (out / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samhess run: IRE(SAM(SGD))" in (out / "report.md").read_text()


def test_a_loop_with_a_tracker_ends_bit_identical_to_one_without(tmp_path):
    x, y = data()
    ends = []
    for tracked in (False, True):
        torch.manual_seed(5)
        np.random.seed(5)
        random.seed(5)
        model, loss_fn = make_model(), nn.CrossEntropyLoss()
        optimizer = make_optimizer(model)
        tracker = None
        if tracked:
            tracker = samhess.Tracker(tmp_path / "tracked", model, loss_fn, (x[:32], y[:32]), every=3,
                                      trace_matvecs=9, optimizer=optimizer)
        train(model, optimizer, loss_fn, x, y, 10, tracker)
        if tracker is not None:
            before = everything(model, optimizer)
            assert tracker.record(12) is not None
            assert same(before, everything(model, optimizer))
            tracker.close()
        ends.append(everything(model, optimizer))
    assert same(*ends)


def test_tracking_a_transformer_from_keyword_batches_without_an_optimizer(tmp_path):
    model = make_transformer()
    batch = token_batch([6, 4, 3], seed=2)
    with samhess.Tracker(tmp_path / "lm", model, TokenCrossEntropy(), batch, every=1, top_k=2) as tracker:
        record = tracker.record(0)
    H = HessianOperator(model, TokenCrossEntropy(), batch)
    assert record["eigenvalues"] == pytest.approx(eigenpairs(H, 2, seed=0).eigenvalues.tolist(), rel=1e-12)
    assert record["gain_ratio"] is None and record["grad_norm"] == pytest.approx(float(H.gradient().norm()), rel=1e-12)


def test_bad_input_is_refused_and_a_failed_record_changes_nothing(tmp_path):
    x, y = data()
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    train(model, optimizer, loss_fn, x, y, 2)
    with pytest.raises(TypeError, match=r"tracking_data must be an \(inputs, targets\) pair, got a dict"):
        samhess.Tracker(tmp_path / "a", model, loss_fn, {"x": x})
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        samhess.Tracker(tmp_path / "a", model, loss_fn, (x, y), every=0)
    with pytest.raises(TypeError, match="optimizer must be a torch optimizer or None, got a str"):
        samhess.Tracker(tmp_path / "a", model, loss_fn, (x, y), optimizer="sgd")
    assert not (tmp_path / "a").exists()

    calls = {"count": 0}

    def failing_loss(outputs, targets):
        calls["count"] += 1
        if calls["count"] > 3:
            raise ValueError("the loss gave up")
        return loss_fn(outputs, targets)

    tracker = samhess.Tracker(tmp_path / "b", model, failing_loss, (x, y), every=2, optimizer=optimizer)
    before = everything(model, optimizer)
    with pytest.raises(ValueError, match="the loss gave up"):
        tracker.record(0)
    assert same(before, everything(model, optimizer))
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == b""
    assert tracker.record(1) is None  # not a tracked step: nothing is measured
    with pytest.raises(ValueError, match="already holds a run; pass overwrite=True"):
        samhess.Tracker(tmp_path / "b", model, loss_fn, (x, y))
    tracker = samhess.Tracker(tmp_path / "b", model, loss_fn, (x, y), every=2, overwrite=True)
    tracker.record(2)
    with pytest.raises(ValueError, match="must come after the last recorded step 2, got 2"):
        tracker.record(2)
    with pytest.raises(TypeError, match="step must be an integer, got a float"):
        tracker.record(4.0)
    tracker.close()
    with pytest.raises(ValueError, match="is closed"):
        tracker.record(4)
