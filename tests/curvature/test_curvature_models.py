"""Curvature on the models people train: attention, keyword inputs, output objects, padded tokens.

Every number is checked against a dense float64 reference computed in ``token_models`` under the
math attention kernel, independently of samhess.
"""

from __future__ import annotations

import copy
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from token_models import (
    IGNORE,
    VOCAB,
    concatenate,
    make_transformer,
    reference_ggn,
    reference_gradient,
    reference_hessian,
    reference_jacobian,
    relative_error,
    token_batch,
)

from samhess.curvature import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    TokenCrossEntropy,
    dense_hessian,
    diagonal,
    eigenpairs,
    fisher_diagonal,
    trace,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def problem():
    """The transformer, a padded batch, and its dense Hessian and GGN."""
    model = make_transformer()
    batch = token_batch([6, 4, 2, 5], seed=1)
    return model, batch, reference_hessian(model, batch), reference_ggn(model, batch)


def probes(dim: int, count: int = 4) -> torch.Tensor:
    return torch.randn(dim, count, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("method", ["double-backward", "forward-over-reverse"])
def test_attention_model_products_equal_the_dense_hessian(problem, method):
    model, batch, hessian, _ = problem
    H = HessianOperator(model, TokenCrossEntropy(), batch, method=method)
    V = probes(H.dim)
    assert relative_error(H @ V, hessian @ V) < 1e-12
    assert relative_error(H @ V[:, 0], hessian @ V[:, 0]) < 1e-12
    assert relative_error(H.gradient(), reference_gradient(model, batch)) < 1e-12


def test_attention_model_estimators_equal_their_dense_answers(problem):
    model, batch, hessian, ggn = problem
    H = HessianOperator(model, TokenCrossEntropy(), batch)
    top = eigenpairs(H, 3)
    torch.testing.assert_close(top.eigenvalues, torch.linalg.eigvalsh(hessian).flip(0)[:3], rtol=1e-8, atol=0)
    # The same probes on the dense matrix: the estimator's answer must be the same number.
    for method in ("hutchinson", "hutch++"):
        assert trace(H, 30, method=method, seed=3).estimate == pytest.approx(
            trace(hessian, 30, method=method, seed=3).estimate, rel=1e-10
        )
    assert relative_error(diagonal(H, "exact"), hessian.diagonal()) < 1e-12
    G = GGNOperator(model, TokenCrossEntropy(), batch)
    V = probes(G.dim)
    assert relative_error(G @ V, ggn @ V) < 1e-12
    assert relative_error(dense_hessian(model, TokenCrossEntropy(), batch), hessian) < 1e-12


def test_fisher_counts_only_the_positions_the_loss_counts(problem):
    """The sampled Fisher from the full Jacobian, with the labels samhess draws, padding left out."""
    model, batch, _, _ = problem
    F_op = FisherOperator(model, TokenCrossEntropy(), batch, seed=5)
    logits, jacobian = reference_jacobian(model, batch)
    rows = logits.reshape(-1, VOCAB)
    generator = torch.Generator().manual_seed(5)
    probabilities = rows.softmax(-1)
    labels = torch.multinomial(probabilities, 1, generator=generator).reshape(-1)
    residuals = probabilities - F.one_hot(labels, VOCAB).to(rows.dtype)
    counted = batch[1].reshape(-1) != IGNORE
    residuals = residuals * counted[:, None]
    projected = (residuals[:, :, None] * jacobian.reshape(rows.shape[0], VOCAB, -1)).sum(dim=1)
    fisher = projected.T @ projected / int(counted.sum())
    V = probes(F_op.dim)
    assert relative_error(F_op @ V, fisher @ V) < 1e-12
    assert int(counted.sum()) < counted.numel()  # the batch has padding to leave out


def test_padded_loader_equals_the_concatenated_batch():
    model = make_transformer()
    first, second = token_batch([6, 2, 2], seed=2), token_batch([5, 6], seed=3)
    whole = concatenate([first, second])
    loss_fn = TokenCrossEntropy()
    V = probes(sum(p.numel() for p in model.parameters()))
    one = HessianOperator(model, loss_fn, whole)
    expected, gradient = one @ V, one.gradient()
    for method in ("double-backward", "forward-over-reverse"):
        two = HessianOperator(model, loss_fn, [first, second], method=method)
        assert relative_error(two @ V, expected) < 1e-10
    assert relative_error(HessianOperator(model, loss_fn, [first, second]).gradient(), gradient) < 1e-10
    ggn = GGNOperator(model, loss_fn, whole) @ V
    assert relative_error(GGNOperator(model, loss_fn, [first, second]) @ V, ggn) < 1e-10
    # Any other loss says what it averages over with weight_of.
    wrapped = lambda outputs, targets: loss_fn(outputs.logits, targets)  # noqa: E731
    tokens = lambda targets: (targets != IGNORE).sum()  # noqa: E731
    assert relative_error(HessianOperator(model, wrapped, [first, second], weight_of=tokens) @ V, expected) < 1e-10
    # Weighting by sequences instead, as before, is visibly wrong: the test can fail.
    sequences = HessianOperator(model, loss_fn, [first, second], weight_of=lambda targets: targets.shape[0])
    assert relative_error(sequences @ V, expected) > 1e-2


def test_cross_entropy_weights_batches_by_counted_and_class_weighted_targets():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    inputs = torch.randn(9, 3, dtype=torch.float64)
    targets = torch.tensor([0, 1, -100, 3, 2, -100, -100, 1, 0])
    class_weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    V = probes(sum(p.numel() for p in model.parameters()))
    for loss_fn in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(weight=class_weight), F.cross_entropy):
        whole = HessianOperator(model, loss_fn, (inputs, targets)) @ V
        split = HessianOperator(model, loss_fn, [(inputs[:3], targets[:3]), (inputs[3:], targets[3:])])
        assert relative_error(split @ V, whole) < 1e-10


def test_attention_kernel_is_math_inside_samhess_and_restored_after(problem):
    model, batch, _, _ = problem
    loss_fn = TokenCrossEntropy()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        model.kernel_flags.clear()
        HessianOperator(model, loss_fn, batch) @ probes(sum(p.numel() for p in model.parameters()), 1)
        fisher_diagonal(model, loss_fn, batch)
        assert model.kernel_flags and set(model.kernel_flags) == {(True, False)}
        model.kernel_flags.clear()
        model(**batch[0])  # the user's own forward pass: their kernels, untouched
        assert model.kernel_flags == [(True, True)]
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_kernels_are_avoided_on_every_device(problem, device):
    """In float32 (where the fused kernels are chosen) the product matches the float64 answer."""
    model, batch, hessian, _ = problem
    model32 = copy.deepcopy(model).float().to(device)
    inputs = {key: value.to(device) for key, value in batch[0].items()}
    V = probes(hessian.shape[0])
    for method in ("double-backward", "forward-over-reverse"):
        H = HessianOperator(model32, TokenCrossEntropy(), (inputs, batch[1].to(device)), method=method)
        assert relative_error((H @ V).double().cpu(), hessian @ V) < 1e-4


class TwoInputs(nn.Module):
    """A model of two inputs that returns a mapping."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(3, 4), nn.Linear(2, 4)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": torch.tanh(self.left(left)) * self.right(right), "aux": left.sum()}


Targets = namedtuple("Targets", ["labels", "scale"])


def test_inputs_targets_and_outputs_of_every_kind():
    """Tuple, list and mapping inputs, tuple targets, mapping outputs: one matrix throughout."""
    torch.manual_seed(5)
    model = TwoInputs().double()
    generator = torch.Generator().manual_seed(6)
    left = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    right = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (10,), generator=generator)
    targets = Targets(labels, 0.5)

    def loss_fn(outputs, targets):
        return targets.scale * F.cross_entropy(outputs["logits"], targets.labels)

    def plain_loss(flat):
        named = dict(model.named_parameters())
        values = dict(zip(named, torch.split(flat, [p.numel() for p in named.values()])))
        values = {n: values[n].view_as(p) for n, p in named.items()}
        logits = torch.func.functional_call(model, values, (left, right))["logits"]
        return 0.5 * F.cross_entropy(logits, labels)

    point = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    expected = torch.autograd.functional.hessian(plain_loss, point)
    V = probes(point.numel())
    # A pair of pairs reads as two batches; a list of one batch says it is one.
    for data in ([((left, right), targets)], [([left, right], targets)], ({"left": left, "right": right}, targets)):
        H = HessianOperator(model, loss_fn, data)
        assert relative_error(H @ V, expected @ V) < 1e-12
    H = HessianOperator(model, lambda outputs, labels: 0.5 * F.cross_entropy(outputs["logits"], labels), ((left, right), labels))
    assert relative_error(H @ V, expected @ V) < 1e-12
    # Two batches of tuple targets: the loss averages over examples, weight_of says so.
    halves = [((left[:4], right[:4]), Targets(labels[:4], 0.5)), ((left[4:], right[4:]), Targets(labels[4:], 0.5))]
    H = HessianOperator(model, loss_fn, halves, weight_of=lambda targets: len(targets.labels))
    assert relative_error(H @ V, expected @ V) < 1e-10
    # The GGN finds the logits in the mapping; logits_of finds them anywhere.
    ggn = GGNOperator(model, loss_fn, [((left, right), targets)])
    chosen = GGNOperator(model, loss_fn, [((left, right), targets)], logits_of=lambda outputs: outputs["logits"])
    torch.testing.assert_close(ggn @ V, chosen @ V, rtol=0, atol=0)
    assert float(V[:, 0] @ (ggn @ V[:, 0])) >= 0


def state_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [t.detach().clone() for t in model.state_dict().values()]
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    moments = [v.clone() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors + grads + moments


def test_bad_input_names_what_was_expected_and_changes_nothing(problem):
    model, batch, _, _ = problem
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = TokenCrossEntropy()(model(**batch[0]), batch[1])
    loss.backward()
    optimizer.step()
    before = state_of(model, optimizer)
    loss_fn = TokenCrossEntropy()
    dim = sum(p.numel() for p in model.parameters())
    with pytest.raises(TypeError, match=r"data must be an \(inputs, targets\) pair .* got a dict with keys \['input_ids'"):
        HessianOperator(model, loss_fn, {**batch[0], "labels": batch[1]})
    with pytest.raises(TypeError, match=r"the inputs of data must be a tensor .*, got a str"):
        HessianOperator(model, loss_fn, ("tokens", batch[1]))
    with pytest.raises(TypeError, match=r"batch 0 of data must be an \(inputs, targets\) pair, got a dict"):
        HessianOperator(model, loss_fn, [{**batch[0], "labels": batch[1]}]) @ torch.zeros(dim)
    with pytest.raises(TypeError, match=r"model returned a tuple of length 2, in which there are no logits"):
        GGNOperator(lambda_model(model), loss_fn, batch) @ torch.zeros(dim)
    with pytest.raises(TypeError, match=r"no logits"):
        fisher_diagonal(lambda_model(model), loss_fn, batch)
    with pytest.raises(TypeError, match=r"logits_of\(outputs\) must return a floating-point tensor, got a str"):
        GGNOperator(model, loss_fn, batch, logits_of=lambda outputs: "logits") @ torch.zeros(dim)
    with pytest.raises(TypeError, match="logits_of must be callable"):
        GGNOperator(model, loss_fn, batch, logits_of="logits")
    two = [batch, batch]
    for bad in (0, -3.0, float("nan")):
        with pytest.raises(ValueError, match=rf"batch 0 of data: weight_of\(targets\) must return a finite number > 0, got {bad}"):
            HessianOperator(model, loss_fn, two, weight_of=lambda targets, bad=bad: bad) @ torch.zeros(dim)
    with pytest.raises(TypeError, match=r"weight_of\(targets\) must return a number, got a str"):
        HessianOperator(model, loss_fn, two, weight_of=lambda targets: "many") @ torch.zeros(dim)
    with pytest.raises(TypeError, match="weight_of must be callable"):
        HessianOperator(model, loss_fn, two, weight_of=3)
    padding_only = (batch[0], torch.full_like(batch[1], IGNORE))
    with pytest.raises(ValueError, match=r"batch 1 of data: no target counts in the loss: every one of its 24 targets is ignore_index=-100$"):
        HessianOperator(model, loss_fn, [batch, padding_only]) @ torch.zeros(dim)
    with pytest.raises(TypeError, match=r"batch 0 of data: the targets are a tuple of length 2, .* pass weight_of"):
        HessianOperator(model, lambda o, t: loss_fn(o, t[0]), [(batch[0], (batch[1], 1))] * 2) @ torch.zeros(dim)
    after = state_of(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, after)) and len(before) == len(after)


class lambda_model(nn.Module):  # noqa: N801 - reads as a function at the call sites
    """Wraps a model so that it returns a tuple, in which there are no named logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs).logits, None
