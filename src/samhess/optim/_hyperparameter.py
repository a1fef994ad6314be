"""Validated hyperparameter attributes and seeds for the optimizers' variants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from samhess._validation import check_int_at_least


class Hyperparameter:
    """A class attribute whose every assignment on an instance passes ``check(name, value)``.

    The check returns the value to store (``samhess._validation``'s checks do), so a bad value
    raises the same clear error at construction, on later assignment and on loading a
    checkpoint.
    """

    def __init__(self, check: Callable[[str, Any], Any]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.__dict__[self.name]

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.name] = self.check(self.name, value)


def resolve_seed(seed: int | None) -> int:
    """``seed`` if given (an integer >= 0), else one drawn from torch's global generator.

    Drawing from the global generator makes ``torch.manual_seed`` decide the optimizer's draws
    too.
    """
    if seed is None:
        return int(torch.randint(0, 2**62, ()))
    return check_int_at_least("seed", seed, 0)
