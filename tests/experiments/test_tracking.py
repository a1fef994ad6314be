"""What a record measures for IRE: sharp/flat gains against the gradient step and the base step."""

from __future__ import annotations

import copy

import pytest
import torch

from samhess.curvature import HessianOperator, eigenpairs
from samhess.experiments.config import build_run_config
from samhess.experiments.task import build_task
from samhess.experiments.tracking import measure_curvature
from samhess.experiments.training_step import StepContext, training_step

from .conftest import TINY_RUN_FLAGS


def _trained_task(optimizer: str, steps: int = 3):
    """A float64 task a few steps into training (IRE's mask set, Adam's moments filled)."""
    config = build_run_config({}, {**TINY_RUN_FLAGS, "optimizer": optimizer, "dtype": "float64"})
    task = build_task(config)
    batch = (task.train_inputs[:32], task.train_targets[:32])
    context = StepContext(kind=task.kind, optimizer=task.optimizer, model=task.model,
                          loss_fn=task.loss_fn, label_generator=task.label_generator)
    for _ in range(steps):
        training_step(context, batch)
    return task


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _ratio(step: torch.Tensor, reference: torch.Tensor, q: torch.Tensor) -> float:
    """Least-squares gain on span(q) over the gain on its complement."""
    sharp_step, sharp_ref = q.T @ step, q.T @ reference
    flat_step, flat_ref = step - q @ sharp_step, reference - q @ sharp_ref
    return float((sharp_step @ sharp_ref) / (sharp_ref @ sharp_ref)) / float(
        (flat_step @ flat_ref) / (flat_ref @ flat_ref))


def _ratios_by_hand(task) -> tuple[float, float]:
    """IRE's sharp/flat ratio against its base's step and against -lr g, computed directly.

    The base step is taken by a deep copy of the model and the inner optimizer (not the
    take-and-undo of the analysis layer), and IRE's step is formed from it as
    D = (I + kappa M) D_base with the optimizer's mask.
    """
    ire = task.optimizer
    model, inner = copy.deepcopy((task.model, ire.optimizer))  # one memo: params stay shared
    model.eval()
    inputs, targets = task.tracking.batch
    params = [p for group in inner.param_groups for p in group["params"]]
    before = _flat(params)
    inner.zero_grad()
    task.loss_fn(model(inputs), targets).backward()
    gradient = _flat(p.grad for p in params)
    inner.step()
    base_step = _flat(params) - before
    ire_step = (1.0 + ire.kappa * _flat(ire.mask)) * base_step
    operator = HessianOperator(task.model, task.loss_fn, task.tracking.batch)
    top = eigenpairs(operator, task.tracking.top_k, which="largest", seed=task.tracking.seed)
    q = torch.linalg.qr(top.eigenvectors).Q
    return _ratio(ire_step, base_step, q), _ratio(ire_step, -task.config.lr * gradient, q)


def test_ire_over_plain_sgd_gets_the_same_ratio_against_either_reference():
    # Without momentum or weight decay SGD's step is -lr g, so measuring IRE against its base
    # (the SGD step taken and undone) and against the gradient step (computed from g) agree.
    task = _trained_task("ire")
    assert task.config.momentum == 0.0 and task.config.weight_decay == 0.0
    record = measure_curvature(task.model, task.optimizer, task.tracking)
    assert record["gain_ratio_vs_base"] == pytest.approx(record["gain_ratio"], rel=1e-9)
    assert record["sharp_gain_vs_base"] == pytest.approx(record["sharp_gain"], rel=1e-9)
    assert record["flat_gain_vs_base"] == pytest.approx(record["flat_gain"], rel=1e-9)
    vs_base, vs_gradient = _ratios_by_hand(task)
    assert record["gain_ratio_vs_base"] == pytest.approx(vs_base, rel=1e-8)
    assert vs_gradient == pytest.approx(vs_base, rel=1e-8)
    # Not a vacuous agreement: IRE's step differs from its base's.
    assert abs(record["flat_gain_vs_base"] - 1.0) > 1e-3


def test_admire_ratio_against_adamw_differs_from_the_gradient_step_ratio():
    task = _trained_task("admire")
    record = measure_curvature(task.model, task.optimizer, task.tracking)
    vs_base, vs_gradient = _ratios_by_hand(task)
    assert record["gain_ratio_vs_base"] == pytest.approx(vs_base, rel=1e-8)
    assert record["gain_ratio"] == pytest.approx(vs_gradient, rel=1e-8)
    # Adam's own scaling moves the gradient-step ratio; the base-step ratio leaves it out.
    assert abs(vs_base - vs_gradient) > 0.05 * abs(vs_gradient), (vs_base, vs_gradient)


def test_optimizers_without_ire_have_no_ratio_against_a_base():
    task = _trained_task("sam", steps=1)
    record = measure_curvature(task.model, task.optimizer, task.tracking)
    assert record["gain_ratio_vs_base"] is None and record["sharp_gain_vs_base"] is None
    assert record["gain_ratio"] is not None


def test_grad_norm_is_the_eval_mode_gradient_norm_on_the_tracking_batch():
    task = _trained_task("sam", steps=1)
    record = measure_curvature(task.model, task.optimizer, task.tracking)
    model = copy.deepcopy(task.model).eval()
    inputs, targets = task.tracking.batch
    grads = torch.autograd.grad(task.loss_fn(model(inputs), targets), list(model.parameters()))
    assert record["grad_norm"] == pytest.approx(float(_flat(grads).norm()), rel=1e-12)
    assert record["grad_norm"] > 0.0


def test_gradient_alignment_against_the_dense_hessian():
    """|<g_hat, v_i>|, their share of ||g||^2 and the sign of <g, v_1> against the eigenvectors of
    the dense Hessian (torch.func) and an autograd gradient, on the tracking batch."""
    task = _trained_task("sgd", steps=2)
    record = measure_curvature(task.model, task.optimizer, task.tracking)
    model = copy.deepcopy(task.model).eval()
    inputs, targets = task.tracking.batch
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(flat):
        tensors = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        outputs = torch.func.functional_call(model, dict(zip(names, tensors)), (inputs,))
        return task.loss_fn(outputs, targets)

    w = _flat(model.parameters())
    g = torch.func.grad(loss)(w)
    values, vectors = torch.linalg.eigh(torch.func.hessian(loss)(w))
    top = vectors[:, torch.argsort(values, descending=True)[:task.tracking.top_k]]
    expected = (top.T @ g).abs() / g.norm()
    assert record["gradient_alignments"] == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-9)
    assert record["sharp_gradient_share"] == pytest.approx(float(expected.square().sum()),
                                                           rel=1e-6)
    v1 = top[:, 0] * torch.sign(top[int(top[:, 0].abs().argmax()), 0])
    assert record["top_eigenvector_sign"] == int(torch.sign(v1 @ g))
