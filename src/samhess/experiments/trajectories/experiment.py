"""What a named experiment is: its settings, its trajectories, and how its records are judged.

An :class:`Experiment` declares, once, everything ``samhess experiment NAME`` needs: its name,
the paper and the claim, and its settings (from which the flags, their checks, the defaults and
the docs table follow, as for ``samhess run``). The declaration is light, so the command line
builds every experiment's flags without loading torch; the work is in the experiment's module,
which defines

* ``arms(config)``: the trajectories it trains
  (:class:`~samhess.experiments.trajectories.arms.Arm`), in order;
* ``findings(config, records)``: what their records show, as :class:`Findings` (numbers,
  verdicts on the claim, a table, figures), computed by plain functions of numbers that a test
  can hand numbers to;
* optionally ``check(config)``: a :class:`~samhess.errors.UsageError` for settings that are
  valid one by one but not together (a batch larger than the data).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from samhess.experiments.settings import Setting, check_values, settings_by_name

if TYPE_CHECKING:
    from samhess.experiments.report_claims import Claim
    from samhess.experiments.report_pages import Image
    from samhess.experiments.trajectories.arms import Arm

__all__ = ["Experiment", "ExperimentConfig", "Findings", "Records", "resolve_config"]

#: The records of each trajectory, by arm name, as ``metrics.jsonl`` holds them.
Records = Mapping[str, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class ExperimentConfig:
    """The resolved settings of one experiment.

    Attributes:
        experiment: the experiment's name.
        values: every setting's value (defaults filled in), by setting name.
        presentation: the names of settings that do not change what is computed (where the
            cache lives): left out of :meth:`identity`, so ``--resume`` lets them change.
    """

    experiment: str
    values: Mapping[str, Any]
    presentation: frozenset[str] = frozenset()

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def identity(self) -> dict[str, Any]:
        """What makes two experiments the same experiment (``config.json``)."""
        values = {name: list(value) if isinstance(value, tuple) else value
                  for name, value in self.values.items() if name not in self.presentation}
        return {"experiment": self.experiment, **values}

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: the identity (presentation settings are not stored)."""
        return self.identity()


@dataclass
class Findings:
    """What an experiment's records show.

    Attributes:
        summary: the numbers, JSON-ready (``summary.json``'s ``results``).
        claims: the paper's claims, each HOLDS or DOES NOT HOLD with the figures behind it.
        table: a table, header row first.
        figures: the report's figures (PNG bytes with their file names and captions).
        notes: sentences printed under the verdicts (how to read the numbers).
    """

    summary: dict[str, Any]
    claims: list[Claim]
    table: list[list[str]]
    figures: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    """One named experiment.

    Attributes:
        name: the command-line name (``sharpness-regularizers``).
        title: the report's title.
        reference: the paper whose claim it tests.
        claim: the claim, in one sentence.
        settings: its settings, in the order of ``--help``.
        module: the module that defines ``arms``, ``findings`` and optionally ``check``.
    """

    name: str
    title: str
    reference: str
    claim: str
    settings: tuple[Setting, ...]
    module: str

    def implementation(self) -> ModuleType:
        return importlib.import_module(self.module)

    def arms(self, config: ExperimentConfig) -> Sequence[Arm]:
        """The trajectories, in the order they are trained."""
        return self.implementation().arms(config)

    def findings(self, config: ExperimentConfig, records: Records) -> Findings:
        """What the trajectories' records show."""
        return self.implementation().findings(config, records)

    def check(self, config: ExperimentConfig) -> None:
        """Raise :class:`~samhess.errors.UsageError` for settings that contradict each other."""
        check = getattr(self.implementation(), "check", None)
        if check is not None:
            check(config)

    def settings_by_name(self) -> Mapping[str, Setting]:
        return settings_by_name(self.settings)

    def default_config(self) -> ExperimentConfig:
        return resolve_config(self, {}, {})


def resolve_config(experiment: Experiment, file_values: Mapping[str, Any],
                   flag_values: Mapping[str, Any], *, source: str = "flags") -> ExperimentConfig:
    """The experiment's configuration: defaults < config file < flags, each value checked.

    ``source`` names the flags' origin in messages (``config.json`` when a stored
    configuration is read back).

    Raises:
        UsageError: an unknown key, a value out of range, or settings that contradict each
            other.
        SettingTypeError: a value of the wrong type.
    """
    settings = experiment.settings_by_name()
    values = {name: setting.default for name, setting in settings.items()}
    values.update(check_values(file_values, settings, source="config file"))
    values.update(check_values(flag_values, settings, source=source))
    presentation = frozenset(name for name, setting in settings.items() if not setting.identity)
    config = ExperimentConfig(experiment.name, values, presentation)
    experiment.check(config)
    return config
