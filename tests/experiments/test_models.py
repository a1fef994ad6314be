"""Models: shapes per data kind, fit checks, ResNet sizes, causality, seeds, float64, autodiff."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from samhess.experiments.data import DATASET_NAMES, TaskData, load_dataset, synthetic_teacher
from samhess.experiments.models import (
    MODEL_NAMES,
    TokenCrossEntropy,
    build_model,
    check_fits,
    default_model_for,
    loss_for,
    model_options,
)
from samhess.experiments.models.resnet import ZeroPadShortcut


def fake_task(name: str, kind: str, input_shape: tuple[int, ...], num_outputs: int, n: int = 3):
    generator = torch.Generator().manual_seed(0)
    if kind == "language_model":
        inputs = torch.randint(num_outputs, (2 * n, *input_shape), generator=generator)
        targets = torch.randint(num_outputs, (2 * n, *input_shape), generator=generator)
    elif kind == "classification":
        inputs = torch.randn(2 * n, *input_shape, generator=generator)
        targets = torch.randint(num_outputs, (2 * n,), generator=generator)
    else:
        inputs = torch.randn(2 * n, *input_shape, generator=generator)
        targets = torch.randn(2 * n, num_outputs, generator=generator)
    return TaskData(name, kind, inputs[:n], targets[:n], inputs[n:], targets[n:],
                    input_shape, num_outputs)


TASKS = {
    "cifar-like": ("classification", (3, 32, 32), 10),
    "mnist-like": ("classification", (1, 28, 28), 10),
    "digits-like": ("classification", (1, 8, 8), 10),
    "signals": ("classification", (1, 40), 10),
    "vectors": ("regression", (16,), 3),
    "tokens": ("language_model", (12,), 7),
}

# Which model trains on which kind of data, written out independently of the registry.
FITS = {
    "mlp": {"cifar-like", "mnist-like", "digits-like", "signals", "vectors"},
    "cnn": {"cifar-like", "mnist-like", "digits-like", "signals"},
    "resnet20": {"cifar-like", "mnist-like", "digits-like"},
    "resnet56": {"cifar-like", "mnist-like", "digits-like"},
    "vit": {"cifar-like", "mnist-like", "digits-like"},
    "transformer": {"tokens"},
}

SMALL = {  # small widths where the defaults are not what a test is about
    "vit": {"dim": 16, "heads": 2, "mlp_dim": 16, "depth": 1},
    "transformer": {"dim": 16, "heads": 2, "mlp_dim": 16, "depth": 2},
}


def task(name: str) -> TaskData:
    return fake_task(name, *TASKS[name])


def test_model_names_cover_the_contract():
    assert set(MODEL_NAMES) == set(FITS)


# ResNet-56 is ResNet-20's code with more blocks: run it on the small images only, to stay fast.
COMBINATIONS = [(m, t) for m in sorted(FITS) for t in sorted(TASKS)
                if m != "resnet56" or t not in ("cifar-like", "mnist-like")]
SMALL_INPUTS = ("digits-like", "signals", "vectors", "tokens")


@pytest.mark.parametrize("model_name, task_name", COMBINATIONS)
def test_output_shape_or_mismatch_error(model_name, task_name):
    data = task(task_name)
    if task_name not in FITS[model_name]:
        message = f"model '{model_name}' does not fit dataset '{task_name}'"
        with pytest.raises(ValueError, match=message):
            build_model(model_name, data)
        return
    model = build_model(model_name, data, **SMALL.get(model_name, {}))
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    out = model(data.train_inputs)
    if data.kind == "language_model":
        expected = (data.num_train, *data.input_shape, data.num_outputs)
    else:
        expected = (data.num_train, data.num_outputs)
    assert out.shape == expected


@pytest.mark.parametrize("model_name, task_name", [(m, t) for m in sorted(FITS) for t in
                                                   sorted(FITS[m])
                                                   if t in SMALL_INPUTS and m != "resnet56"])
def test_float64_and_functional_call_agree_with_float32(model_name, task_name):
    data = task(task_name)
    model = build_model(model_name, data, **SMALL.get(model_name, {}))
    model.eval()
    inputs = data.train_inputs
    with torch.no_grad():
        out32 = model(inputs)
    model64 = copy.deepcopy(model).double()
    inputs64 = inputs if data.kind == "language_model" else inputs.double()
    out64 = model64(inputs64)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)
    state = {**dict(model64.named_parameters()), **dict(model64.named_buffers())}
    assert torch.equal(functional_call(model64, state, (inputs64,)), out64)


def test_cnn_uses_1d_convolutions_for_signals_and_2d_for_images():
    kinds = {type(m) for m in build_model("cnn", task("signals")).modules()}
    assert nn.Conv1d in kinds and nn.BatchNorm1d in kinds and nn.Conv2d not in kinds
    kinds = {type(m) for m in build_model("cnn", task("mnist-like")).modules()}
    assert nn.Conv2d in kinds and nn.BatchNorm2d in kinds


# ----------------------------------------------------------------------------- ResNets


def cifar_resnet_size(blocks_per_stage, in_channels=3, classes=10, projection=False):
    """Parameters of He et al.'s CIFAR ResNet, counted from the paper's description."""
    count = in_channels * 16 * 9 + 2 * 16  # first 3x3 conv (no bias) and its batch norm
    width = 16
    for out in (16, 32, 64):
        for _ in range(blocks_per_stage):
            count += width * out * 9 + out * out * 9 + 2 * (2 * out)  # two convs, two batch norms
            if projection and width != out:
                count += width * out + 2 * out  # 1x1 projection and its batch norm
            width = out
    return count + 64 * classes + classes


@pytest.mark.parametrize("name, n, published", [("resnet20", 3, 0.27), ("resnet56", 9, 0.85)])
def test_resnet_parameter_counts_match_the_paper(name, n, published):
    data = task("cifar-like")
    count = sum(p.numel() for p in build_model(name, data).parameters())
    assert count == cifar_resnet_size(n)
    # He et al. (2016), Table 6, give the sizes rounded to 0.01M.
    assert abs(count / 1e6 - published) <= 0.005
    projected = sum(p.numel() for p in build_model(name, data, shortcut="B").parameters())
    assert projected == cifar_resnet_size(n, projection=True)
    assert {269_722: "resnet20", 853_018: "resnet56"}[count] == name


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 3, 6, 6)
    out = ZeroPadShortcut(stride=2, extra_channels=5)(x)
    assert out.shape == (2, 8, 3, 3)
    assert torch.equal(out[:, :3], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 3:], torch.zeros(2, 5, 3, 3))


# ----------------------------------------------------------------------------- Transformer


@pytest.mark.parametrize("train", [True, False])
def test_transformer_is_causal_exactly(train):
    data = task("tokens")
    model = build_model("transformer", data, **SMALL["transformer"]).train(train)
    tokens = data.train_inputs.clone()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % data.num_outputs
    with torch.set_grad_enabled(train):
        before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.equal(before[:, 6], after[:, 6])


def test_transformer_accepts_shorter_sequences_but_not_longer():
    data = task("tokens")
    model = build_model("transformer", data, **SMALL["transformer"])
    full = model(data.train_inputs)
    # Causality again, from the other side: a prefix gives the prefix's logits.
    torch.testing.assert_close(model(data.train_inputs[:, :5]), full[:, :5], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="length 13 exceeds the model's context_length 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("model_name, task_name",
                         [("transformer", "tokens"), ("vit", "digits-like")])
def test_attention_models_have_hessian_vector_products(model_name, task_name, train):
    """Forward-over-reverse, double backward and finite differences give the same H v (float64)."""
    data = task(task_name)
    model = build_model(model_name, data, seed=1, **SMALL[model_name]).double().train(train)
    inputs = data.train_inputs if data.kind == "language_model" else data.train_inputs.double()
    loss_fn = loss_for(data)
    params = {k: v.detach() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype)
                 for k, v in params.items()}

    def loss(p):
        return loss_fn(functional_call(model, p, (inputs,)), data.train_targets)

    forward_over_reverse = jvp(grad(loss), (params,), (direction,))[1]

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    gradients = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
    inner = sum((g * direction[k]).sum() for g, k in zip(gradients, leaves))
    double_backward = dict(zip(leaves, torch.autograd.grad(inner, list(leaves.values()))))

    # Central differences err by O(step^2) (checked: the error falls 100-fold per 10-fold step).
    step = 1e-6
    plus = grad(loss)({k: v + step * direction[k] for k, v in params.items()})
    minus = grad(loss)({k: v - step * direction[k] for k, v in params.items()})
    for key in params:
        torch.testing.assert_close(forward_over_reverse[key], double_backward[key],
                                   rtol=1e-9, atol=1e-12)
        finite_difference = (plus[key] - minus[key]) / (2 * step)
        error = (forward_over_reverse[key] - finite_difference).abs().max()
        assert error <= 1e-6 * forward_over_reverse[key].abs().max() + 1e-12, key


# ----------------------------------------------------------------------------- seeds and options


@pytest.mark.parametrize("model_name, task_name", [
    ("mlp", "vectors"), ("cnn", "signals"), ("resnet20", "digits-like"), ("vit", "digits-like"),
    ("transformer", "tokens"),
])
def test_same_seed_same_parameters_and_global_rng_untouched(model_name, task_name):
    data = task(task_name)
    options = SMALL.get(model_name, {})
    torch.manual_seed(100)
    state = torch.get_rng_state()
    first = build_model(model_name, data, seed=3, **options).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(200)
    second = build_model(model_name, data, seed=3, **options).state_dict()
    other = build_model(model_name, data, seed=4, **options).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_transformer_layers_start_from_different_weights():
    model = build_model("transformer", task("tokens"), **SMALL["transformer"])
    first, second = model.blocks.layers
    assert not torch.equal(first.linear1.weight, second.linear1.weight)


def test_bad_options_are_named():
    digits = task("digits-like")
    with pytest.raises(ValueError, match="unknown option 'widths' for model 'mlp'.*hidden_sizes"):
        build_model("mlp", digits, widths=(3,))
    with pytest.raises(TypeError, match="hidden_sizes"):
        build_model("mlp", digits, hidden_sizes="64")
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", digits, activation="sigmoid")
    with pytest.raises(ValueError, match="patch_size must divide the image size 8x8.*got 3"):
        build_model("vit", digits, patch_size=3)
    with pytest.raises(ValueError, match="heads must divide dim"):
        build_model("transformer", task("tokens"), dim=10, heads=3)
    with pytest.raises(ValueError, match="shortcut"):
        build_model("resnet20", digits, shortcut="C")
    with pytest.raises(ValueError, match="model.*'resnet18'"):
        build_model("resnet18", digits)
    assert set(model_options("mlp")) == {"hidden_sizes", "activation"}


def test_synthetic_student_defaults_to_the_teacher_architecture():
    data = load_dataset("synthetic", hidden_sizes=(7, 5), activation="tanh", limit=4)
    student = build_model("mlp", data)
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 7), (7, 5), (5, 1)]
    assert sum(isinstance(m, nn.Tanh) for m in student.modules()) == 2
    # The teacher loaded into the default student attains the recorded optimum.
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, synthetic_teacher(data)):
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        loss = loss_for(data)(student(data.train_inputs), data.train_targets)
    assert float(loss) == pytest.approx(data.metadata["teacher_train_loss"], rel=1e-5)
    override = build_model("mlp", data, hidden_sizes=(4,))
    assert [m.out_features for m in override.modules() if isinstance(m, nn.Linear)] == [4, 1]


# ----------------------------------------------------------------------------- defaults and losses


def test_default_model_fits_every_dataset():
    stand_ins = {"cifar10": "cifar-like", "cifar100": "cifar-like", "mnist": "mnist-like",
                 "fashion-mnist": "mnist-like", "text": "tokens", "mnist1d": "signals"}
    for name in DATASET_NAMES:
        model_name = default_model_for(name)
        assert model_name in MODEL_NAMES
        data = task(stand_ins[name]) if name in stand_ins else load_dataset(name, limit=2)
        check_fits(model_name, data)
    assert default_model_for("digits") == "mlp" and default_model_for("cifar10") == "resnet20"
    assert default_model_for("chars") == "transformer"
    with pytest.raises(ValueError, match="dataset.*'svhn'"):
        default_model_for("svhn")


def test_token_cross_entropy_is_cross_entropy_over_flattened_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    targets = torch.randint(7, (2, 5), generator=generator)
    loss = TokenCrossEntropy()
    assert isinstance(loss, nn.CrossEntropyLoss)
    by_hand = -logits.log_softmax(-1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss(logits, targets), by_hand, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss(logits, targets),
                               F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1)))
    masked = targets.clone()
    masked[0, :2] = -100
    smoothed = TokenCrossEntropy(label_smoothing=0.1)
    torch.testing.assert_close(smoothed(logits, masked), F.cross_entropy(
        logits.reshape(-1, 7), masked.reshape(-1), label_smoothing=0.1))
    per_token = TokenCrossEntropy(reduction="none")(logits, targets)
    assert per_token.shape == (2, 5)
    torch.testing.assert_close(per_token.mean(), by_hand)
    with pytest.raises(ValueError, match=r"targets of shape \(2, 5\)"):
        loss(logits, targets[:, :4])


def test_loss_for_each_kind():
    assert type(loss_for(task("digits-like"))) is nn.CrossEntropyLoss
    assert type(loss_for(task("tokens"))) is TokenCrossEntropy
    assert type(loss_for(task("vectors"))) is nn.MSELoss
