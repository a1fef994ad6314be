"""The data contract: what a batch is, how it reaches the model, and how it is moved.

A batch is a pair ``(inputs, targets)``.

* ``inputs`` is what the model is called with: a tensor (``model(inputs)``), a tuple or list
  (``model(*inputs)``, a model with several inputs) or a mapping (``model(**inputs)``, what
  tokenizers and collators produce: ``{"input_ids": ..., "attention_mask": ...}``).
* ``targets`` is anything ``loss_fn(outputs, targets)`` accepts: a tensor, a tuple, a mapping,
  any object.
* The model's outputs (a tensor, a mapping, an object such as a Hugging Face ``ModelOutput``)
  reach ``loss_fn`` as they are; where the logits themselves are needed,
  :func:`samhess.curvature.logits.find_logits` takes them out.

Every function in :mod:`samhess.curvature` and :mod:`samhess.analysis` that runs a model goes
through :func:`check_batch` and :func:`call_model`, so they all accept the same batches and
refuse the same ones with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "check_batch",
    "model_arguments",
    "call_model",
    "map_tensors",
    "move_batch",
    "tensors_in",
    "count_examples",
    "select_examples",
    "describe",
]


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages: its type and its shape or size."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:6])
        return f"a {type(value).__name__} with keys [{keys}]"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def check_batch(batch: object, name: str = "batch") -> tuple[Any, Any]:
    """Return ``batch`` as ``(inputs, targets)``, or raise a ``TypeError`` naming it.

    Raises:
        TypeError: if ``batch`` is not a pair, or its inputs are neither a tensor, a tuple or
            list, nor a mapping with string keys.
    """
    if isinstance(batch, Mapping):
        raise TypeError(
            f"{name} must be an (inputs, targets) pair, got {describe(batch)}; pass the "
            "model's keyword arguments as the first item: (inputs_mapping, targets)"
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{name} must be an (inputs, targets) pair, got {describe(batch)}")
    inputs, targets = batch
    if isinstance(inputs, Mapping):
        if not all(isinstance(key, str) for key in inputs):
            raise TypeError(
                f"the inputs of {name} are a mapping, so its keys must be the model's argument "
                f"names (strings), got {describe(inputs)}"
            )
    elif not isinstance(inputs, (torch.Tensor, tuple, list)):
        raise TypeError(
            f"the inputs of {name} must be a tensor (model(inputs)), a tuple or list "
            f"(model(*inputs)) or a mapping (model(**inputs)), got {describe(inputs)}"
        )
    return inputs, targets


def model_arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments the model is called with for ``inputs``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return tuple(inputs), {}


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``, by the kind of ``inputs``."""
    args, kwargs = model_arguments(inputs)
    return model(*args, **kwargs)


def map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``function`` applied to every tensor inside tuples, lists and mappings.

    Containers are rebuilt (tuples, named tuples and lists keep their type, mappings become
    ``dict``); anything else is returned as it is.
    """
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, Mapping):
        return {key: map_tensors(item, function) for key, item in value.items()}
    if isinstance(value, tuple):
        items = [map_tensors(item, function) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [map_tensors(item, function) for item in value]
    return value


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``value`` (itself, or in nested tuples, lists and mappings)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors_in(item)


def move_batch(batch: tuple[Any, Any], *, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """The batch on ``device``, floating tensors cast to ``dtype``.

    Casting lets a model converted with ``model.double()`` run on float32 data, so that float64
    works end to end. Integer tensors (class labels, token ids, attention masks) keep their dtype.
    """

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype)
        return tensor.to(device=device)

    inputs, targets = batch
    return map_tensors(inputs, move), map_tensors(targets, move)


def count_examples(batch: tuple[Any, Any], name: str = "batch") -> int:
    """The number of examples of ``batch``: the leading dimension of the first tensor of its inputs.

    Raises:
        ValueError: if the inputs hold no tensor with a leading dimension.
    """
    inputs, _ = check_batch(batch, name)
    for tensor in tensors_in(inputs):
        if tensor.ndim >= 1:
            return int(tensor.shape[0])
    raise ValueError(f"the inputs of {name} hold no tensor with a batch dimension: {describe(inputs)}")


def select_examples(batch: tuple[Any, Any], index: torch.Tensor, name: str = "batch") -> tuple[Any, Any]:
    """The examples ``index`` of ``batch``: every tensor of inputs and targets indexed along dim 0.

    Raises:
        ValueError: if a tensor's leading dimension is not the batch's number of examples.
        TypeError: if the targets hold something other than tensors and containers of tensors.
    """
    inputs, targets = check_batch(batch, name)
    total = count_examples(batch, name)

    def select(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 0 or tensor.shape[0] != total:
            raise ValueError(
                f"cannot take examples of {name}: it holds {total} examples but a tensor of shape "
                f"{tuple(tensor.shape)}"
            )
        return tensor[index.to(tensor.device)]

    for part, value in (("inputs", inputs), ("targets", targets)):
        if not _only_tensors(value):
            raise TypeError(
                f"cannot take examples of {name}: its {part} hold {describe(value)} with "
                "something other than tensors"
            )
    return map_tensors(inputs, select), map_tensors(targets, select)


def micro_batch(batch: tuple[Any, Any], index: int, count: int,
                name: str = "batch") -> tuple[Any, Any]:
    """Micro-batch ``index`` of ``count`` equal contiguous parts of ``batch`` (m-sharpness).

    Part ``i`` holds examples ``i * s`` to ``(i + 1) * s - 1`` with ``s = n // count``; the
    remaining ``n % count`` examples belong to no part.

    Raises:
        ValueError: ``count`` exceeds the number of examples, or ``index`` is out of range.
    """
    total = count_examples(batch, name)
    if not 1 <= count <= total:
        raise ValueError(f"cannot split {name} of {total} examples into {count} micro-batches")
    if not 0 <= index < count:
        raise ValueError(f"micro-batch index {index} is out of range for {count} micro-batches")
    size = total // count
    return select_examples(batch, torch.arange(index * size, (index + 1) * size), name)


def _only_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return all(_only_tensors(item) for item in value.values())
    if isinstance(value, (tuple, list)):
        return all(_only_tensors(item) for item in value)
    return False
