"""Per-layer curvature against the blocks of the dense Hessian (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from samhess.experiments.layer_curvature import measure_layer_curvature, parameter_blocks


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(),
                          nn.Linear(5, 3)).double()
    inputs = torch.randn(40, 8, dtype=torch.float64)
    targets = torch.randint(0, 3, (40,))
    return model, nn.CrossEntropyLoss(), (inputs, targets)


def _dense_hessian(model, loss_fn, batch):
    """The full Hessian from torch.func over the flat parameter vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(flat):
        tensors = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        outputs = torch.func.functional_call(model, dict(zip(names, tensors)), (batch[0],))
        return loss_fn(outputs, batch[1])

    point = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.func.hessian(loss)(point), sizes


def _dense_blocks(model, loss_fn, batch):
    hessian, sizes = _dense_hessian(model, loss_fn, batch)
    # each Linear owns a weight and a bias, adjacent in the flat layout
    bounds, start = [], 0
    for weight, bias in zip(sizes[0::2], sizes[1::2]):
        bounds.append((start, start + weight + bias))
        start += weight + bias
    return hessian, [hessian[a:b, a:b] for a, b in bounds]


def test_exact_blocks_match_the_dense_hessian():
    model, loss_fn, batch = _problem()
    hessian, blocks = _dense_blocks(model, loss_fn, batch)
    measured = measure_layer_curvature(model, loss_fn, batch, list(model.parameters()),
                                       trace_matvecs=100, seed=0)
    assert [m["block"] for m in measured] == ["0", "2", "4"]
    assert [m["module"] for m in measured] == ["Linear"] * 3
    assert [m["parameters"] for m in measured] == [54, 35, 18]
    for entry, block in zip(measured, blocks):
        assert entry["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]),
                                                    rel=1e-10)
        assert entry["hessian_trace"] == pytest.approx(float(torch.trace(block)), rel=1e-10)
        assert entry["hessian_trace_stderr"] == 0.0
    # The blocks' traces add up to the whole trace; no block is sharper than the whole.
    assert sum(m["hessian_trace"] for m in measured) == pytest.approx(float(torch.trace(hessian)),
                                                                      rel=1e-10)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    assert all(m["lambda_max"] <= top * (1 + 1e-12) for m in measured)


def test_lanczos_and_hutch_plus_plus_blocks_against_the_dense_hessian():
    model, loss_fn, batch = _problem()
    _, blocks = _dense_blocks(model, loss_fn, batch)
    measured = measure_layer_curvature(model, loss_fn, batch, list(model.parameters()),
                                       trace_matvecs=12, seed=3)
    for entry, block in zip(measured, blocks):
        assert entry["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]),
                                                    rel=1e-6)
        exact = float(torch.trace(block))
        assert entry["hessian_trace_stderr"] > 0.0
        assert abs(entry["hessian_trace"] - exact) < 4 * entry["hessian_trace_stderr"] + 1e-9
        assert entry["hessian_matvecs"] > 12


def test_blocks_follow_the_owning_modules_and_refuse_foreign_parameters():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    model[1].weight = model[0].weight  # tied: the embedding owns it
    blocks = parameter_blocks(model, list(model.parameters()))
    assert [(b.name, b.module, b.size) for b in blocks] == [("0", "Embedding", 40),
                                                            ("1", "Linear", 10)]
    assert blocks[1].params == (model[1].bias,)
    # only the parameters asked for
    assert [b.name for b in parameter_blocks(model, [model[1].bias])] == ["1"]
    with pytest.raises(ValueError, match="not parameters of the model"):
        parameter_blocks(model, [nn.Parameter(torch.zeros(3))])
