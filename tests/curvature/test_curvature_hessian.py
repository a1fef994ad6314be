"""HessianOperator against dense float64 Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from samhess.curvature import HessianOperator, dense_hessian
from samhess.curvature.hessian import HVP_METHODS

from curvature_reference import (
    MODEL_NAMES,
    build_problem,
    loss_of_flat,
    make_batch,
    make_cnn,
    make_mlp,
    make_unused,
    reference_hessian,
    relative_error,
)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("method", HVP_METHODS)
def test_products_match_dense_hessian(name, method):
    model, loss_fn, batch = build_problem(name)
    expected = reference_hessian(model, loss_fn, *batch)
    H = HessianOperator(model, loss_fn, batch, method=method)
    vectors = torch.randn(H.dim, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert relative_error(H @ vectors[:, 0], expected @ vectors[:, 0]) < 1e-10
    assert relative_error(H @ vectors, expected @ vectors) < 1e-10
    assert H.num_matvecs == 4
    assert (H.dim, H.dtype, H.device) == (expected.shape[0], torch.float64, torch.device("cpu"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_hessian_matches_reference(name):
    model, loss_fn, batch = build_problem(name)
    expected = reference_hessian(model, loss_fn, *batch)
    assert relative_error(dense_hessian(model, loss_fn, batch), expected) < 1e-12


def test_unused_parameter_has_zero_rows():
    model = make_unused()
    batch = make_batch(5)
    H = HessianOperator(model, nn.CrossEntropyLoss(), batch).to_dense()
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "unused"  # a module's own parameters come before its children's
    start = 0
    assert torch.count_nonzero(H[start : start + 4]) == 0
    assert torch.count_nonzero(H[:, start : start + 4]) == 0


@pytest.mark.parametrize("method", HVP_METHODS)
def test_loader_equals_concatenated_batch(method):
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    inputs, targets = make_batch(5, size=23)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=7)  # sizes 7, 7, 7, 2
    vectors = torch.randn(135, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = HessianOperator(model, loss_fn, (inputs, targets), method=method) @ vectors
    batched = HessianOperator(model, loss_fn, loader, method=method) @ vectors
    assert relative_error(batched, whole) < 1e-12
    # Weighting matters: the unweighted mean of the four batch Hessians is a different matrix.
    unweighted = sum(HessianOperator(model, loss_fn, b) @ vectors for b in loader) / 4
    assert relative_error(unweighted, whole) > 1e-3


def test_parameter_subset_gives_diagonal_block():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    batch = make_batch(5)
    params = [model[2].weight, model[4].bias]
    full = reference_hessian(model, loss_fn, *batch)
    offsets = {id(p): 0 for p in model.parameters()}
    start = 0
    for p in model.parameters():
        offsets[id(p)] = start
        start += p.numel()
    index = torch.cat([torch.arange(offsets[id(p)], offsets[id(p)] + p.numel()) for p in params])
    block = HessianOperator(model, loss_fn, batch, params=params).to_dense()
    assert block.shape == (9 * 6 + 3,) * 2
    assert relative_error(block, full[index][:, index]) < 1e-12


def test_mode_is_restored_and_running_statistics_untouched():
    model = make_cnn().train()
    running = model[2].running_mean.clone()
    loss_fn, batch = nn.CrossEntropyLoss(), make_batch(25)
    v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    eval_product = HessianOperator(model, loss_fn, batch) @ v
    assert model.training and model[2].training
    assert relative_error(eval_product, reference_hessian(model, loss_fn, *batch) @ v) < 1e-10
    forward_product = HessianOperator(model, loss_fn, batch, method="forward-over-reverse") @ v
    assert model.training and model[2].training
    assert relative_error(forward_product, eval_product) < 1e-10
    # Train mode: batch statistics, and the running averages still do not move.
    train_product = HessianOperator(model, loss_fn, batch, eval_mode=False) @ v
    assert model.training
    assert torch.equal(model[2].running_mean, running)
    loss, point = loss_of_flat(model, loss_fn, *batch)  # this one does update them
    expected = torch.autograd.functional.hessian(loss, point) @ v
    assert relative_error(train_product, expected) < 1e-10
    assert relative_error(train_product, eval_product) > 1e-3


def test_float32_data_on_float64_model():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    inputs, targets = make_batch(5)
    H = HessianOperator(model, loss_fn, (inputs.float(), targets))
    v = torch.randn(H.dim, dtype=torch.float64)
    product = H @ v
    assert product.dtype == torch.float64
    expected = reference_hessian(model, loss_fn, inputs.float().double(), targets) @ v
    assert relative_error(product, expected) < 1e-12


def test_cached_graph_follows_parameter_updates():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    batch = make_batch(5)
    H = HessianOperator(model, loss_fn, batch)
    v = torch.randn(H.dim, dtype=torch.float64)
    before = H @ v
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    after = H @ v
    assert relative_error(after, reference_hessian(model, loss_fn, *batch) @ v) < 1e-10
    assert relative_error(after, before) > 1e-3


def test_cached_graph_of_cast_data_is_kept_and_follows_in_place_edits():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    inputs, targets = make_batch(5)
    inputs = inputs.float()  # cast to float64 for every product: the cache must key on the original
    H = HessianOperator(model, loss_fn, (inputs, targets))
    v = torch.randn(H.dim, dtype=torch.float64)
    before = H @ v
    kept = H._cached_state
    assert torch.equal(H @ v, before) and H._cached_state is kept
    with torch.no_grad():
        inputs.mul_(2.0)
    after = H @ v
    assert H._cached_state is not kept
    assert relative_error(after, reference_hessian(model, loss_fn, inputs.double(), targets) @ v) < 1e-12
    assert relative_error(after, before) > 1e-3


def test_non_finite_loss_is_refused_on_every_product_after_a_kept_graph():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    H = HessianOperator(model, loss_fn, make_batch(5))
    v = torch.randn(H.dim, dtype=torch.float64)
    H @ v
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    for _ in range(2):  # the graph of the non-finite loss must not be kept and reused unchecked
        with pytest.raises(ValueError, match="loss over data is not finite"):
            H @ v
    assert H.num_matvecs == 1


def test_gradient_and_scipy_operator():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    batch = make_batch(5)
    H = HessianOperator(model, loss_fn, batch)
    loss, point = loss_of_flat(model, loss_fn, *batch)
    assert relative_error(H.gradient(), torch.autograd.functional.jacobian(loss, point)) < 1e-12
    operator = H.as_linear_operator()
    x = np.linspace(-1.0, 1.0, H.dim)
    expected = (reference_hessian(model, loss_fn, *batch) @ torch.from_numpy(x)).numpy()
    assert operator.dtype == np.float64
    assert np.allclose(operator @ x, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    assert H.num_matvecs == 1


def test_bad_input():
    model, loss_fn = make_mlp(), nn.CrossEntropyLoss()
    batch = make_batch(5)
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, loss_fn, []) @ torch.zeros(135, dtype=torch.float64)
    with pytest.raises(ValueError, match="no examples"):
        HessianOperator(model, loss_fn, (batch[0][:0], batch[1][:0])) @ torch.zeros(135)
    frozen = make_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(frozen, loss_fn, batch)
    with pytest.raises(ValueError, match="not a parameter of model"):
        HessianOperator(model, loss_fn, batch, params=[nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError, match="re-iterable"):
        HessianOperator(model, loss_fn, iter([batch]))
    with pytest.raises(ValueError, match="method"):
        HessianOperator(model, loss_fn, batch, method="finite-differences")
    H = HessianOperator(model, loss_fn, batch)
    for shape in [(134,), (135, 2, 1), (2, 135)]:
        with pytest.raises(ValueError, match=r"shape \(135,\) or \(135, k\)"):
            H @ torch.zeros(shape, dtype=torch.float64)
    broken = make_mlp()
    with torch.no_grad():
        broken[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="loss over data is not finite"):
        HessianOperator(broken, loss_fn, batch) @ torch.zeros(135, dtype=torch.float64)
    assert H.num_matvecs == 0
