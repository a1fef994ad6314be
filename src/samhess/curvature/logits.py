"""The logits inside a model's outputs, for the curvature that is built on them.

The Gauss-Newton and Fisher matrices are :math:`J^\\top (\\cdot) J` with :math:`J` the Jacobian of
the network's outputs :math:`f` (the logits) in the parameters, so they need :math:`f` itself,
while ``loss_fn`` receives the outputs as the model returns them. :func:`find_logits` takes
:math:`f` from

1. ``logits_of(outputs)``, when the caller passes such a function;
2. the outputs themselves, when they are a tensor;
3. ``outputs["logits"]``, when they are a mapping (a Hugging Face ``ModelOutput`` is one);
4. ``outputs.logits``, when they are an object with that attribute;

and refuses anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from samhess.curvature.batches import describe

__all__ = ["find_logits", "check_logits_of"]


def check_logits_of(logits_of: Any) -> Callable[[Any], torch.Tensor] | None:
    """Return ``logits_of`` if it is ``None`` or callable, else raise ``TypeError``."""
    if logits_of is not None and not callable(logits_of):
        raise TypeError(f"logits_of must be callable or None, got {describe(logits_of)}")
    return logits_of


def find_logits(outputs: Any, logits_of: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """The logits in ``outputs`` (rules in the module docstring).

    Raises:
        TypeError: if no rule finds a floating-point tensor.
    """
    if logits_of is not None:
        logits = logits_of(outputs)
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError(
                f"logits_of(outputs) must return a floating-point tensor, got {describe(logits)}"
            )
        return logits
    if isinstance(outputs, torch.Tensor):
        logits = outputs
    elif isinstance(outputs, Mapping) and "logits" in outputs:
        logits = outputs["logits"]
    elif not isinstance(outputs, Mapping) and hasattr(outputs, "logits"):
        logits = outputs.logits
    else:
        raise TypeError(
            f"the model returned {describe(outputs)}, in which there are no logits: return a "
            "tensor, a mapping with a 'logits' entry or an object with a .logits attribute, or "
            "pass logits_of=lambda outputs: <the logits tensor>"
        )
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"the model's logits must be a floating-point tensor, got {describe(logits)}")
    return logits
