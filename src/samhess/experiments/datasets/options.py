"""Options of a data set loader or model builder, read from its keyword parameters.

The registries in :mod:`samhess.experiments.data` and :mod:`samhess.experiments.models` take
their options from the signature of the function behind each name, so that the defaults live in
one place and listing and checking options need no table kept by hand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable


def keyword_defaults(function: Callable, exclude: Collection[str] = ()) -> dict[str, object]:
    """The keyword-only parameters of ``function`` not in ``exclude``, with their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in exclude
    }


def check_known_options(
    what: str, name: str, options: Iterable[str], accepted: Iterable[str]
) -> None:
    """Raise ``ValueError`` naming the first option not in ``accepted`` and listing those.

    Args:
        what: the kind of thing configured, e.g. ``"dataset"``.
        name: its name, e.g. ``"synthetic"``.
        options: the option names given.
        accepted: every option name ``name`` accepts.
    """
    accepted = sorted(accepted)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for {what} {name!r}; accepted: {', '.join(accepted)}"
        )
