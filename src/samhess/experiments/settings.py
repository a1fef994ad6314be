"""A setting of a run, declared once: its type, checks, default, flag and help.

A :class:`Setting` is everything the project says about one configuration key. From the list of
settings follow the run configuration's fields (:class:`samhess.experiments.config.RunConfig`),
the validation of config files and flags, the ``samhess run``/``compare`` flags and their help,
the resolved defaults, and the table in ``docs/cli.md``
(``python -m samhess.experiments.config`` prints it). The general settings are declared in
:mod:`samhess.experiments.config`; an optimizer's hyperparameters in
:mod:`samhess.experiments.optimizer_kinds`, beside the optimizer kinds that read them.

Every problem is a :class:`~samhess.errors.UsageError` (a ``ValueError``; a
:class:`~samhess.errors.SettingTypeError`, also a ``TypeError``, for a wrong type) whose
one-line message names the setting as
the user wrote it (``--track-every 0`` for a flag, ``config file: steps = 0`` for a file key) and
the value.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samhess.errors import SettingTypeError, UsageError

__all__ = [
    "ValueKind",
    "Bound",
    "Setting",
    "Scope",
    "at_least",
    "greater_than",
    "below",
    "at_most",
    "open_unit_interval",
    "setting_label",
    "invalid",
    "settings_by_name",
    "by_unique_name",
    "normalize_key",
    "check_values",
    "markdown_row",
]


class ValueKind(enum.Enum):
    """What a setting's value is: its Python types, its description in messages, its flag type."""

    INT = "int"
    REAL = "real"
    STR = "str"
    BOOL = "bool"
    REALS = "reals"

    @property
    def types(self) -> tuple[type, ...]:
        return {"int": (int,), "real": (int, float), "str": (str,), "bool": (bool,),
                "reals": (list, tuple)}[self.value]

    @property
    def description(self) -> str:
        return {"int": "an integer", "real": "a number", "str": "a string",
                "bool": "true or false", "reals": "a list of numbers"}[self.value]

    @property
    def annotation(self) -> Any:
        return {"int": int, "real": float, "str": str, "bool": bool,
                "reals": tuple[float, ...]}[self.value]


class Scope(enum.Enum):
    """Which commands read a setting."""

    BOTH = "run and compare"
    RUN = "run"
    COMPARE = "compare"


@dataclass(frozen=True)
class Bound:
    """One requirement on a value: ``test(value)`` must hold, else ``requirement`` is reported."""

    test: Callable[[Any], bool]
    requirement: str


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def at_least(minimum: float) -> Bound:
    return Bound(lambda value: value >= minimum, f"must be >= {_number(minimum)}")


def greater_than(minimum: float) -> Bound:
    return Bound(lambda value: value > minimum, f"must be > {_number(minimum)}")


def below(maximum: float) -> Bound:
    return Bound(lambda value: value < maximum, f"must be < {_number(maximum)}")


def at_most(maximum: float) -> Bound:
    return Bound(lambda value: value <= maximum, f"must be <= {_number(maximum)}")


def open_unit_interval() -> Bound:
    return Bound(lambda value: 0.0 < value < 1.0, "must lie in the open interval (0, 1)")


@dataclass(frozen=True)
class Setting:
    """One configuration key.

    Attributes:
        name: the key (``batch_size``); the flag is ``--batch-size``.
        kind: the value's :class:`ValueKind`.
        default: the value when none is given; ``None`` for a setting resolved from the others
            (``resolved_default`` then says how, for help and docs).
        help: what the setting is, one phrase, without its default.
        group: the heading it is listed under in ``--help`` and the docs.
        metavar: the flag's placeholder.
        bounds: requirements on a value (each element of a list, for :attr:`ValueKind.REALS`).
        choices: the allowed names, or a function returning them (called only when needed, so
            that registries that import torch load late).
        nullable: ``None`` is a valid value (``null`` in a file): "resolve it".
        per_optimizer: its default depends on the optimizer kind
            (:attr:`samhess.experiments.optimizer_kinds.OptimizerKind.defaults`).
        resolved_default: how an unset value is resolved, for help and docs.
        identity: part of what makes two runs the same run; ``False`` for presentation
            settings (where files go, TensorBoard), which ``--resume`` lets change.
        scope: the commands that read it.
        min_items: the fewest elements of a :attr:`ValueKind.REALS` list.
    """

    name: str
    kind: ValueKind
    default: Any
    help: str
    group: str
    metavar: str = "X"
    bounds: tuple[Bound, ...] = ()
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    nullable: bool = False
    per_optimizer: bool = False
    resolved_default: str | None = None
    identity: bool = True
    scope: Scope = Scope.BOTH
    min_items: int = 0

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> tuple[str, ...]:
        """The allowed names (empty when any value of the right type goes)."""
        if self.choices is None:
            return ()
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def default_text(self) -> str:
        """The default as help and docs state it."""
        if self.resolved_default is not None:
            return self.resolved_default
        if self.kind is ValueKind.REALS:
            return ", ".join(f"{v:g}" for v in self.default)
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    def check(self, value: object, source: str) -> Any:
        """``value`` typed and checked, or a one-line ``TypeError``/``ValueError``.

        Args:
            value: as read from a file or a flag.
            source: ``"flags"``, ``"config file"``, ``"config.json"``, ...: how the message
                names the setting (:func:`setting_label`).
        """
        if value is None and self.nullable:
            return None
        label = setting_label(self.name, value, source)
        # bool is an int in Python; a key written `steps = true` is a mistake, not 1.
        if (isinstance(value, bool) and bool not in self.kind.types) or not isinstance(
                value, self.kind.types):
            raise SettingTypeError(f"{label} has the wrong type: expected {self.kind.description}")
        if self.kind is ValueKind.REALS:
            return self._check_reals(value, source)
        if self.kind is ValueKind.REAL:
            value = float(value)
            if not math.isfinite(value):
                raise invalid(self.name, value, "must be finite", source)
        for bound in self.bounds:
            if not bound.test(value):
                raise invalid(self.name, value, bound.requirement, source)
        allowed = self.allowed()
        if allowed and value not in allowed:
            raise invalid(self.name, value, "must be one of " + ", ".join(allowed), source)
        return value

    def _check_reals(self, value: Sequence[Any], source: str) -> tuple[float, ...]:
        items = list(value)
        if len(items) < self.min_items:
            raise invalid(self.name, items, f"needs at least {self.min_items} values", source)
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise invalid(self.name, items, "every element must be a number", source)
            number = float(item)
            if not math.isfinite(number):
                raise invalid(self.name, items, "every element must be finite", source)
            for bound in self.bounds:
                if not bound.test(number):
                    raise invalid(self.name, items, f"every element {bound.requirement}", source)
            out.append(number)
        return tuple(out)


def setting_label(key: str, value: object, source: str) -> str:
    """How a setting is named in messages: as the flag a user typed, or as the file's key."""
    if source == "flags":
        return f"--{key.replace('_', '-')} {value!r}"
    return f"{source}: {key} = {value!r}"


def invalid(key: str, value: object, requirement: str, source: str) -> UsageError:
    """The error for a value of the right type that breaks a requirement."""
    return UsageError(f"{setting_label(key, value, source)} is invalid: {requirement}")


def by_unique_name(declarations: Sequence[Any], what: str) -> dict[str, Any]:
    """``{declaration.name: declaration}``, refusing two declarations of one name.

    Raises:
        ValueError: two declarations share a name (``what`` says of what).
    """
    out: dict[str, Any] = {}
    for declaration in declarations:
        if declaration.name in out:
            raise ValueError(f"{what} {declaration.name!r} is declared twice")
        out[declaration.name] = declaration
    return out


def settings_by_name(settings: Sequence[Setting]) -> Mapping[str, Setting]:
    """``{name: setting}``, refusing two declarations of one name."""
    return by_unique_name(settings, "setting")


def normalize_key(key: object, source: str) -> str:
    """``weight-decay`` and ``weight_decay`` name the same key."""
    if not isinstance(key, str):
        raise SettingTypeError(f"{source}: key {key!r} is not a string")
    return key.replace("-", "_")


def check_values(values: Mapping[str, Any], settings: Mapping[str, Setting], *, source: str,
                 other_keys: Sequence[str] = (), checked_last: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """Every (key, value) of ``values`` checked against its declaration, typed.

    Args:
        values: keys as written (``weight-decay`` or ``weight_decay``) and their values.
        settings: the declared settings by name.
        source: how messages name the origin (:func:`setting_label`).
        other_keys: keys valid elsewhere, offered as corrections of a typo.
        checked_last: keys checked after the others (their choices may load registries).

    Raises:
        UsageError: an unknown key (with the closest known one) or a value out of range.
        SettingTypeError: a value of the wrong type.
    """
    out: dict[str, Any] = {}
    ordered = sorted(values.items(), key=lambda item: str(item[0]) in checked_last)
    for raw_key, value in ordered:
        key = normalize_key(raw_key, source)
        if key not in settings:
            close = difflib.get_close_matches(key, [*settings, *other_keys], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{source}: unknown key {raw_key!r}{hint}")
        out[key] = settings[key].check(value, source)
    return out


def markdown_row(*cells: str) -> str:
    """A markdown table row; a ``|`` inside a cell (``||g||``) is escaped."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
