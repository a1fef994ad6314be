"""Building a model by name for a data set, checking that the two fit together."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from samhess._validation import check_choice, check_int_at_least, check_real

from ..datasets.options import check_known_options, keyword_defaults
from ..datasets.task import TaskData
from .cnn import ConvNet
from .mlp import ACTIVATIONS, MLP
from .resnet import CifarResNet
from .transformer import DecoderTransformer
from .vit import VisionTransformer


def _sizes(name: str, values: Sequence[int], minimum_length: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of integers, got {values!r}")
    if len(values) < minimum_length:
        raise ValueError(f"{name} must hold at least {minimum_length} value(s), got {values!r}")
    return tuple(check_int_at_least(name, v, 1) for v in values)


def _dropout(value: float) -> float:
    value = check_real("dropout", value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {value!r}")
    return value


def _heads(dim: int, heads: int) -> tuple[int, int]:
    dim = check_int_at_least("dim", dim, 1)
    heads = check_int_at_least("heads", heads, 1)
    if dim % heads:
        raise ValueError(f"heads must divide dim, got heads={heads} and dim={dim}")
    return dim, heads


def _mlp(data: TaskData, *, hidden_sizes=(64, 32), activation="relu") -> nn.Module:
    hidden_sizes = _sizes("hidden_sizes", hidden_sizes, 0)
    activation = check_choice("activation", activation, tuple(ACTIVATIONS))
    return MLP(math.prod(data.input_shape), data.num_outputs, hidden_sizes, activation)


def _cnn(data: TaskData, *, channels=(16, 32, 64)) -> nn.Module:
    return ConvNet(data.input_shape, data.num_outputs, _sizes("channels", channels, 1))


def _resnet(blocks_per_stage: int) -> Callable[..., nn.Module]:
    def build(data: TaskData, *, shortcut="A") -> nn.Module:
        shortcut = check_choice("shortcut", shortcut, ("A", "B"))
        return CifarResNet(data.input_shape, data.num_outputs, blocks_per_stage, shortcut)

    return build


def _vit(
    data: TaskData, *, patch_size=4, dim=64, depth=2, heads=4, mlp_dim=128, dropout=0.0
) -> nn.Module:
    patch_size = check_int_at_least("patch_size", patch_size, 1)
    height, width = data.input_shape[1:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"patch_size must divide the image size {height}x{width} of dataset "
            f"{data.name!r}, got {patch_size}"
        )
    dim, heads = _heads(dim, heads)
    return VisionTransformer(
        data.input_shape, data.num_outputs, patch_size, dim,
        check_int_at_least("depth", depth, 1), heads, check_int_at_least("mlp_dim", mlp_dim, 1),
        _dropout(dropout),
    )


def _transformer(
    data: TaskData, *, dim=64, depth=2, heads=4, mlp_dim=256, dropout=0.0, context_length=None
) -> nn.Module:
    dim, heads = _heads(dim, heads)
    if context_length is None:
        context_length = data.input_shape[0]
    return DecoderTransformer(
        data.num_outputs, check_int_at_least("context_length", context_length, 1), dim,
        check_int_at_least("depth", depth, 1), heads, check_int_at_least("mlp_dim", mlp_dim, 1),
        _dropout(dropout),
    )


# name -> (builder, task kinds it fits, input ranks it fits (None: any), what it needs in words)
_Spec = tuple[Callable[..., nn.Module], tuple[str, ...], tuple[int, ...] | None, str]
_MODELS: dict[str, _Spec] = {
    "mlp": (_mlp, ("classification", "regression"), None,
            "a classification or regression dataset"),
    "cnn": (_cnn, ("classification", "regression"), (2, 3),
            "signals (C, L) or images (C, H, W) to classify or regress"),
    "resnet20": (_resnet(3), ("classification",), (3,), "images (C, H, W) to classify"),
    "resnet56": (_resnet(9), ("classification",), (3,), "images (C, H, W) to classify"),
    "vit": (_vit, ("classification",), (3,), "images (C, H, W) to classify"),
    "transformer": (_transformer, ("language_model",), None,
                    "a language_model dataset (token sequences)"),
}

#: Every name :func:`build_model` accepts.
MODEL_NAMES = tuple(_MODELS)

_DEFAULT_MODELS = {
    "digits": "mlp",
    "mnist1d": "cnn",
    "synthetic": "mlp",
    "chars": "transformer",
    "cifar10": "resnet20",
    "cifar100": "resnet20",
    "mnist": "cnn",
    "fashion-mnist": "cnn",
    "text": "transformer",
}


def default_model_for(dataset: str) -> str:
    """The model a run on ``dataset`` uses unless told otherwise.

    digits, synthetic: ``"mlp"``; mnist1d, mnist, fashion-mnist: ``"cnn"``; cifar10/100:
    ``"resnet20"``; chars, text: ``"transformer"``.
    """
    return _DEFAULT_MODELS[check_choice("dataset", dataset, tuple(_DEFAULT_MODELS))]


def model_options(name: str) -> dict[str, object]:
    """The options model ``name`` accepts beyond ``seed``, with their defaults."""
    name = check_choice("model", name, MODEL_NAMES)
    return keyword_defaults(_MODELS[name][0])


def check_fits(name: str, data: TaskData) -> None:
    """Raise ``ValueError`` naming both if model ``name`` cannot be trained on ``data``."""
    name = check_choice("model", name, MODEL_NAMES)
    _, kinds, ranks, needs = _MODELS[name]
    if data.kind not in kinds or (ranks is not None and len(data.input_shape) not in ranks):
        raise ValueError(
            f"model {name!r} does not fit dataset {data.name!r}: the model needs {needs}, the "
            f"dataset is a {data.kind} task with inputs shaped {data.input_shape}"
        )


def build_model(name: str, data: TaskData, *, seed: int = 0, **options) -> nn.Module:
    """Build model ``name`` shaped for ``data``, with weights drawn deterministically from ``seed``.

    Options default to the model's own defaults (:func:`model_options`), overridden by
    ``data.metadata["model_defaults"][name]`` when the data set supplies one (the ``synthetic``
    data set makes the ``mlp`` student match its teacher), overridden in turn by ``options``.

    The global random state is left untouched: weights are drawn inside
    ``torch.random.fork_rng`` after ``torch.manual_seed(seed)``, so the same seed gives identical
    parameters whatever ran before.

    Args:
        name: one of :data:`MODEL_NAMES`.
        data: the data set the model will be trained on (input shape, outputs, task kind).
        seed: seed of the initial weights.
        **options: model specific options (see :func:`model_options`).

    Returns:
        An ``nn.Module`` in float32, in training mode. Outputs: ``(N, num_outputs)`` for
        classification and regression, ``(N, T, vocab)`` for language models.

    Raises:
        ValueError: unknown model or option, a bad option value, or a model that does not fit
            the data (the message names both).
    """
    check_fits(name, data)
    seed = check_int_at_least("seed", seed, 0)
    check_known_options("model", name, options, [*model_options(name), "seed"])
    resolved = {**data.metadata.get("model_defaults", {}).get(name, {}), **options}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _MODELS[name][0](data, **resolved)
