"""Run configuration: defaults, config files (TOML or YAML), validation and resolution.

A run is described by one :class:`RunConfig`. Its values come from three places, later ones
winning: the defaults below, a config file (``--config FILE``), and command-line flags. The
resolved configuration (every default filled in, the model and the per-optimizer learning rate
and radius chosen) is what a run writes to ``config.json`` and what ``--resume`` compares
against.

A config file is a flat table whose keys are the long flag names with ``_`` for ``-``::

    # run.toml
    optimizer = "sam"
    dataset = "digits"
    steps = 400
    rho = 0.05

``samhess compare`` also reads ``optimizers`` (a list, or a comma-separated string) and ``seeds``
(the number of seeds, 0 .. seeds-1) from the same file, and both commands read ``out``, the
output directory (``--out`` wins over it; see :func:`take_output_dir`).

YAML files are read with YAML 1.2's numbers: ``lr: 1e-3`` is a float, as in TOML (PyYAML's
YAML 1.1 would make it a string).

Every problem is a :class:`~samhess.errors.UsageError` (a ``ValueError``; for a wrong type a
:class:`~samhess.errors.SettingTypeError`, also a ``TypeError``) whose one-line message names
the key and the value, so the command line can print it as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess.errors import SettingTypeError, UsageError
from samhess.experiments.optimizer_kinds import (
    HYPERPARAMETER_GROUP,
    HYPERPARAMETERS,
    OPTIMIZER_KINDS,
    optimizer_kind,
)
from samhess.experiments.settings import (
    Bound,
    Scope,
    Setting,
    ValueKind,
    at_least,
    at_most,
    below,
    check_values,
    greater_than,
    invalid,
    markdown_row,
    normalize_key,
    setting_label,
    settings_by_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


DTYPE_NAMES: tuple[str, ...] = ("float32", "float64")
#: Where SAM's ascent comes from when the global batch is split across ranks (torchrun): the
#: global gradient (the single-process step on the whole batch) or each rank's own shard
#: (per-replica perturbations, m-sharpness). One process: the same step either way.
SAM_PERTURBATIONS: tuple[str, ...] = ("global", "per-replica")
DEVICE_NAMES: tuple[str, ...] = ("cpu", "cuda", "auto")

#: Models whose Hessian-vector products cost one to three orders of magnitude more than the
#: default MLP's (0.2 s to 2 s per product on 256 examples on one CPU core, against 1 ms): their
#: tracking defaults are smaller, so that a record takes seconds rather than a minute.
LARGE_MODELS = frozenset({"transformer", "vit", "resnet20", "resnet56"})
#: Examples of the fixed curvature batch (the default, and for :data:`LARGE_MODELS`).
DEFAULT_TRACKING_BATCH = 256
DEFAULT_TRACKING_BATCH_LARGE = 64
#: Tokens of the fixed curvature batch on token data: a product's cost grows with the tokens, not
#: the sequences (4096 tokens = 64 sequences of the default 64 characters).
DEFAULT_TRACKING_TOKENS = 4096
#: Hessian-vector products of the Hutch++ trace per record (the default, and for large models).
DEFAULT_TRACE_MATVECS = 30
DEFAULT_TRACE_MATVECS_LARGE = 15

#: Per-layer curvature is recorded at every this many records (the default of
#: ``layer_track_every``, in records rather than steps so that it stays a multiple).
LAYER_RECORD_SPACING = 2
#: Points per axis of the final loss-landscape slices (the default, and for large models).
DEFAULT_LANDSCAPE_POINTS = 21
DEFAULT_LANDSCAPE_POINTS_LARGE = 11

#: The config-file key of the output directory (``--out``), read by the command line.
OUTPUT_KEY = "out"
DEFAULT_COMPARE_OPTIMIZERS: tuple[str, ...] = ("sgd", "sam", "ire", "sam-ire")
DEFAULT_COMPARE_SEEDS = 3

#: numpy and scikit-learn take seeds below 2**32.
_SEED_LIMIT = 2**32


def _dataset_names() -> tuple[str, ...]:
    from samhess.experiments.data import DATASET_NAMES

    return tuple(DATASET_NAMES)


def _model_names() -> tuple[str, ...]:
    from samhess.experiments.models import MODEL_NAMES

    return tuple(MODEL_NAMES)


TASK, TRACKING, ANALYSIS, COMPARISON, OUTPUT = (
    "task", "tracking", "final analysis", "comparison", "output")
#: The order of the groups in ``--help`` and in the docs.
GROUP_ORDER = (COMPARISON, TASK, HYPERPARAMETER_GROUP, TRACKING, ANALYSIS, OUTPUT)

_V = ValueKind
#: The general settings of a run, in the order of ``--help`` within each group. An optimizer's
#: hyperparameters are declared with the optimizer kinds
#: (:data:`samhess.experiments.optimizer_kinds.HYPERPARAMETERS`).
GENERAL_SETTINGS: tuple[Setting, ...] = (
    Setting("optimizer", _V.STR, "sgd", "the optimizer (one of the optimizers listed below)", TASK, "NAME",
            choices=lambda: tuple(OPTIMIZER_KINDS), scope=Scope.RUN,
            resolved_default="sgd in a config; required by samhess run"),
    Setting("dataset", _V.STR, "digits", "data set: embedded digits, mnist1d, synthetic, chars; "
            "from files in --data-dir cifar10, cifar100, mnist, fashion-mnist, text "
            "(docs/data.md)", TASK, "NAME", choices=_dataset_names),
    Setting("model", _V.STR, None, "model: mlp, cnn, resnet20, resnet56, vit, transformer", TASK, "NAME", choices=_model_names, nullable=True,
            resolved_default="the data set's default model"),
    Setting("data_dir", _V.STR, None, "directory holding data sets read from files", TASK, "DIR",
            nullable=True, identity=False, resolved_default="none"),
    Setting("steps", _V.INT, 1000, "optimizer steps", TASK, "N", (at_least(1),)),
    Setting("seed", _V.INT, 0, "seeds the data split, the initial weights, the batch order and "
            "every estimator", TASK, "S", (at_least(0), below(_SEED_LIMIT)),
            scope=Scope.RUN),
    Setting("batch_size", _V.INT, 64, "mini-batch size", TASK, "B", (at_least(1),)),
    Setting("dtype", _V.STR, "float32", "parameter and input precision", TASK, "DTYPE",
            choices=DTYPE_NAMES),
    Setting("device", _V.STR, "cpu", "device (auto: CUDA where available)", TASK, "DEVICE",
            choices=DEVICE_NAMES),
    Setting("sam_perturbation", _V.STR, "global",
            "under torchrun, SAM's ascent from the global gradient (global) or from each rank's "
            "own shard (per-replica)", TASK, "MODE", choices=SAM_PERTURBATIONS),
    Setting("track_every", _V.INT, 50, "steps between tracked records", TRACKING, "K",
            (at_least(1),)),
    Setting("checkpoint_every", _V.INT, None, "steps between checkpoints", TRACKING, "K",
            (at_least(1),), nullable=True, resolved_default="every record"),
    Setting("top_k", _V.INT, 3, "Hessian eigenvalues per record, lambda_max first, and the sharp "
            "directions of the gains", TRACKING,
            "K", (at_least(1),)),
    Setting("trace_matvecs", _V.INT, None, "Hessian-vector products of the Hutch++ trace",
            TRACKING, "M", (Bound(lambda v: v >= 3, "must be >= 3 (Hutch++ splits it in three)"),),
            nullable=True,
            resolved_default=f"{DEFAULT_TRACE_MATVECS}; {DEFAULT_TRACE_MATVECS_LARGE} for the "
            "transformer, vit, resnets and language models"),
    Setting("tracking_batch_size", _V.INT, None,
            "examples (sequences for token data) in the fixed curvature batch", TRACKING, "B",
            (at_least(1),), nullable=True,
            resolved_default=f"{DEFAULT_TRACKING_BATCH}; {DEFAULT_TRACKING_BATCH_LARGE} for the "
            f"vit and resnets; {DEFAULT_TRACKING_TOKENS} tokens' worth of sequences for "
            "language models"),
    Setting("eval_examples", _V.INT, None, "train/test examples for loss and accuracy",
            TRACKING, "N", (at_least(1),), nullable=True, resolved_default="all"),
    Setting("layer_track_every", _V.INT, None,
            "steps between per-layer curvature records (lambda_max and Tr(H) of each layer's "
            "diagonal Hessian block); a multiple of --track-every, 0 for none", TRACKING, "K",
            (at_least(0),), nullable=True,
            resolved_default=f"{LAYER_RECORD_SPACING} x --track-every; 0 for the transformer, "
            "vit, resnets and language models"),
    Setting("taylor_rhos", _V.REALS, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            "radii of the final Taylor check (comma-separated)", ANALYSIS, "RHOS",
            (greater_than(0), at_most(10)), min_items=2),
    Setting("density_probes", _V.INT, 2, "random probes of the final spectral density",
            ANALYSIS, "P", (at_least(1),)),
    Setting("density_lanczos_steps", _V.INT, 30, "Lanczos steps per spectral-density probe",
            ANALYSIS, "S", (at_least(2),)),
    Setting("landscape_points", _V.INT, None,
            "points per axis of the final loss-landscape slices (the 2-D slice evaluates the "
            "loss at points^2 models); 0 for none", ANALYSIS, "N",
            (Bound(lambda v: v == 0 or v >= 3, "must be 0 (no slices) or >= 3"),),
            nullable=True,
            resolved_default=f"{DEFAULT_LANDSCAPE_POINTS}; {DEFAULT_LANDSCAPE_POINTS_LARGE} for "
            "the transformer, vit, resnets and language models"),
    Setting("landscape_radius", _V.REAL, 1.0,
            "half-width of the loss-landscape slices: the distance along the top eigenvector, "
            "and the step in units of each filter's norm along the random directions",
            ANALYSIS, "R", (greater_than(0),)),
    Setting("tensorboard", _V.BOOL, False, "also write TensorBoard event files", OUTPUT,
            identity=False),
)

#: Settings only ``samhess compare`` reads (``optimizers`` is a list or a comma-separated
#: string, checked by :func:`parse_optimizer_list`).
COMPARE_SETTINGS: tuple[Setting, ...] = (
    Setting("optimizers", _V.STR, ",".join(DEFAULT_COMPARE_OPTIMIZERS),
            "comma-separated optimizer names", COMPARISON, "LIST", scope=Scope.COMPARE),
    Setting("seeds", _V.INT, DEFAULT_COMPARE_SEEDS, "seeds 0..N-1 per optimizer", COMPARISON,
            "N", (at_least(1), at_most(_SEED_LIMIT)), scope=Scope.COMPARE),
)

#: Every setting of :class:`RunConfig`: the general ones and every optimizer hyperparameter.
RUN_SETTINGS: Mapping[str, Setting] = settings_by_name(GENERAL_SETTINGS + HYPERPARAMETERS)
_COMPARE_SETTINGS = settings_by_name(COMPARE_SETTINGS)
#: Keys that change where output goes or how it is shown, not what the run computes;
#: ``--resume`` does not require them to match the stored configuration.
PRESENTATION_KEYS = frozenset(name for name, s in RUN_SETTINGS.items() if not s.identity)
#: Keys that only ``samhess compare`` reads.
COMPARE_KEYS = frozenset(_COMPARE_SETTINGS)


def _initial(setting: Setting) -> Any:
    """A field's value before resolution: ``None`` for what resolves per optimizer."""
    return None if setting.per_optimizer else setting.default


def _field_type(setting: Setting) -> Any:
    annotation = setting.kind.annotation
    return annotation | None if setting.nullable else annotation


def _to_dict(self: Any) -> dict[str, Any]:
    """The configuration as plain JSON data (tuples become lists)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()}


def _from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Validate ``values`` (as read back from ``config.json``, provenance and all) into a
    config."""
    from samhess.experiments.provenance import run_settings

    return resolve(validate_values(run_settings(values), source="config.json"))


def _identity(self: Any) -> dict[str, Any]:
    """The values that make two runs the same run (presentation keys left out)."""
    return {k: v for k, v in self.to_dict().items() if k not in PRESENTATION_KEYS}


def _setting_lines() -> str:
    return "\n".join(f"        {s.name}: {s.help} (default {s.default_text()})."
                     for s in RUN_SETTINGS.values())


#: Everything that determines one training run: one field per setting of :data:`RUN_SETTINGS`
#: (generated from the declarations, so that a setting is declared once).
RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [(s.name, _field_type(s), dataclasses.field(default=_initial(s), metadata={"setting": s}))
     for s in RUN_SETTINGS.values()],
    frozen=True,
    namespace={"to_dict": _to_dict, "from_dict": classmethod(_from_dict),
               "identity": _identity, "__module__": __name__},
)
RunConfig.__doc__ = ("Everything that determines one training run.\n\n    Attributes:\n"
                     + _setting_lines() + "\n    ")


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: the same task for several optimizers and seeds."""

    optimizers: tuple[str, ...] = DEFAULT_COMPARE_OPTIMIZERS
    seeds: int = DEFAULT_COMPARE_SEEDS
    task: Any = field(default_factory=lambda: RunConfig())

    def run_config(self, optimizer: str, seed: int) -> Any:
        """The resolved configuration of one member run."""
        values = {**self.task.to_dict(), "optimizer": optimizer, "seed": seed}
        return resolve(validate_values(values, source="compare"))

    def to_dict(self) -> dict[str, Any]:
        task = self.task.to_dict()
        # A compare's task leaves optimizer-dependent values open; each run resolves its own.
        for key in ("optimizer", "seed"):
            task.pop(key)
        return {"optimizers": list(self.optimizers), "seeds": self.seeds, "task": task}

    def identity(self) -> dict[str, Any]:
        out = self.to_dict()
        out["task"] = {k: v for k, v in out["task"].items() if k not in PRESENTATION_KEYS}
        return out

    @classmethod
    def from_dict(cls, values: Any, *, source: str) -> "CompareConfig":
        """Validate a :meth:`to_dict` as read back (``compare.json``); every key is required.

        Raises:
            UsageError, SettingTypeError: a missing or bad key, named with ``source``.
        """
        if not isinstance(values, dict) or not isinstance(values.get("task"), dict):
            raise UsageError(f"{source} is not a comparison description (it needs optimizers, "
                             "seeds and a task table)")
        for key in ("optimizers", "seeds"):
            if key not in values:
                raise UsageError(f"{source} is not a comparison description: it lacks {key}")
        optimizers = parse_optimizer_list(values["optimizers"], source)
        seeds = _COMPARE_SETTINGS["seeds"].check(values["seeds"], source)
        task = dict(values["task"])
        missing = [name for name in RUN_SETTINGS if name not in task and name not in (
            "optimizer", "seed")]
        if missing:
            raise UsageError(f"{source}: its task lacks {', '.join(missing)}")
        for forbidden in ("optimizer", "seed"):
            task.pop(forbidden, None)
        return cls(optimizers=optimizers, seeds=seeds,
                   task=RunConfig(**validate_values(task, source=source)))


def validate_values(values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Check every (key, value) of a run's settings; return them typed.

    Raises:
        UsageError: an unknown key or a value out of range, named in the message.
        SettingTypeError: a value of the wrong type, named in the message.
    """
    # Names that need the data and model registries (and so torch) are checked last, so a
    # plain typo is reported at once.
    return check_values(values, RUN_SETTINGS, source=source,
                        other_keys=[*sorted(COMPARE_KEYS), OUTPUT_KEY],
                        checked_last=("dataset", "model"))


def is_large_task(dataset: str, model: str) -> bool:
    """Whether a task's Hessian-vector products are costly (:data:`LARGE_MODELS`, or token
    data), so that its tracking and analysis defaults are frugal."""
    from samhess.experiments.data import LANGUAGE_MODEL_DATASETS

    return model in LARGE_MODELS or dataset in LANGUAGE_MODEL_DATASETS


def default_tracking(dataset: str, model: str) -> tuple[int, int]:
    """The default ``(tracking_batch_size, trace_matvecs)`` of a task.

    A record's cost is its Hessian-vector products (about 35 for the top-3 eigenvalues, plus
    the trace's) times the cost of one product, which grows with the model and with the
    examples (tokens, for a language model) of the curvature batch. On the 112k-parameter
    character transformer a product over 256 sequences of 64 tokens takes about 0.8 s on one
    CPU core, so a record took about a minute; 64 sequences (4096 tokens) and 15 trace products
    bring it to 6 to 10 s, and the top eigenvalues barely move (64.3 against 64.6 at
    initialization).

    * language models (:data:`~samhess.experiments.data.LANGUAGE_MODEL_DATASETS`): as many
      sequences of the data set's default length as hold :data:`DEFAULT_TRACKING_TOKENS`;
    * other :data:`LARGE_MODELS`: :data:`DEFAULT_TRACKING_BATCH_LARGE` examples;
    * everything else: :data:`DEFAULT_TRACKING_BATCH` examples;
    * the trace: :data:`DEFAULT_TRACE_MATVECS_LARGE` products for large models, else
      :data:`DEFAULT_TRACE_MATVECS`.
    """
    from samhess.experiments.data import LANGUAGE_MODEL_DATASETS, dataset_options

    large = is_large_task(dataset, model)
    if dataset in LANGUAGE_MODEL_DATASETS:
        batch = max(1, DEFAULT_TRACKING_TOKENS // int(dataset_options(dataset)["seq_len"]))
    else:
        batch = DEFAULT_TRACKING_BATCH_LARGE if large else DEFAULT_TRACKING_BATCH
    return batch, DEFAULT_TRACE_MATVECS_LARGE if large else DEFAULT_TRACE_MATVECS


def _resolve_task(config: Any) -> dict[str, Any]:
    """The settings that resolve from the task alone (model, checkpoints, tracking)."""
    changes: dict[str, Any] = {}
    if config.model is None:
        from samhess.experiments.models import default_model_for

        changes["model"] = default_model_for(config.dataset)
    if config.checkpoint_every is None:
        changes["checkpoint_every"] = config.track_every
    if config.tracking_batch_size is None or config.trace_matvecs is None:
        batch, matvecs = default_tracking(config.dataset, changes.get("model", config.model))
        if config.tracking_batch_size is None:
            changes["tracking_batch_size"] = batch
        if config.trace_matvecs is None:
            changes["trace_matvecs"] = matvecs
    large = is_large_task(config.dataset, changes.get("model", config.model))
    if config.layer_track_every is None:
        changes["layer_track_every"] = 0 if large else LAYER_RECORD_SPACING * config.track_every
    elif config.layer_track_every % config.track_every:
        raise UsageError(f"--layer-track-every {config.layer_track_every} is invalid: it must be "
                         f"a multiple of --track-every {config.track_every} (or 0 for no "
                         "per-layer curvature)")
    if config.landscape_points is None:
        changes["landscape_points"] = (DEFAULT_LANDSCAPE_POINTS_LARGE if large
                                       else DEFAULT_LANDSCAPE_POINTS)
    return changes


def resolve(values: Mapping[str, Any]) -> Any:
    """Fill in defaults: the task's (model, tracking) and the optimizer kind's (lr, rho)."""
    config = RunConfig(**values)
    kind = optimizer_kind(config.optimizer)
    changes = _resolve_task(config)
    for name, setting in RUN_SETTINGS.items():
        if setting.per_optimizer and getattr(config, name) is None:
            changes[name] = kind.default_of(setting)
    config = dataclasses.replace(config, **changes)
    problem = kind.check(config) if kind.check is not None else None
    if problem is not None:
        raise UsageError(f"optimizer {kind.name!r}: {problem}")
    return config


def record_steps(config: Any) -> list[int]:
    """The steps a run records at: 0, every ``track_every`` steps, and its last step."""
    steps = list(range(0, config.steps + 1, config.track_every))
    if steps[-1] != config.steps:
        steps.append(config.steps)
    return steps


def per_optimizer_defaults(setting: Setting) -> str:
    """A per-optimizer setting's default in words: ``0.1; 0.001 for adamw, admire``."""
    others: dict[Any, list[str]] = {}
    for kind in OPTIMIZER_KINDS.values():
        if setting.name in kind.reads and kind.default_of(setting) != setting.default:
            others.setdefault(kind.default_of(setting), []).append(kind.name)
    parts = [f"{setting.default:g}"] + [f"{value:g} for {', '.join(names)}"
                                        for value, names in others.items()]
    return "; ".join(parts)


def default_in_words(setting: Setting) -> str:
    """A setting's default as help texts and docs state it."""
    if setting.per_optimizer:
        return per_optimizer_defaults(setting)
    return setting.default_text()


def _refuse_unread(flag_values: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """A hyperparameter flag that none of the optimizers ``names`` reads is an error (a config
    file may hold hyperparameters for other optimizers)."""
    hyper = {setting.name for setting in HYPERPARAMETERS}
    for key, value in flag_values.items():
        if key in hyper and not any(key in optimizer_kind(name).reads for name in names):
            which = (f"optimizer {names[0]!r}" if len(names) == 1
                     else "any of the optimizers " + ", ".join(names))
            raise UsageError(f"{setting_label(key, value, 'flags')} does not apply to {which}")


#: A YAML 1.2 float in exponent form without a dot or without an exponent sign (``1e-3``,
#: ``5E-3``, ``1e5``, ``1.0e5``, ``.5e-3``), which YAML 1.1 (PyYAML) leaves a string.
_YAML_EXPONENT_FLOAT = r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$"


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """PyYAML's safe loader reading exponent-form numbers as floats, refusing duplicate keys.

    PyYAML follows YAML 1.1, whose float pattern needs a dot and a signed exponent, so
    ``lr: 1e-3`` would load as the string ``'1e-3'``; YAML 1.2 (and TOML) read it as a number.
    The extra implicit resolver adds the YAML 1.2 forms; everything else resolves as before.
    """
    import re

    import yaml

    class ExponentFloatLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # PyYAML keeps the last of two equal keys without a word; TOML refuses them.
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    # add_implicit_resolver copies the inherited table first, so SafeLoader is left unchanged.
    ExponentFloatLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(_YAML_EXPONENT_FLOAT), list("-+.0123456789"))
    return ExponentFloatLoader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a flat mapping.

    Raises:
        ValueError: the file is missing, unreadable, malformed, or not a flat table.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise UsageError(f"config file {str(path)!r} must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {str(path)!r} cannot be read: {exc}") from None
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise UsageError(f"config file {str(path)!r} is not valid YAML: {reason}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {str(path)!r} must hold a table of key = value settings")
    for key, value in data.items():
        if isinstance(value, dict):
            raise UsageError(
                f"config file {str(path)!r}: {key!r} is a section; settings are flat key = value"
            )
    return data


def take_output_dir(values: Mapping[str, Any], *,
                    source: str = "config file") -> tuple[dict[str, Any], str | None]:
    """Split the output directory (key ``out``) off a config file's settings.

    ``out`` says where files go, not what the run computes, so it is no part of
    :class:`RunConfig`; the command line uses it where ``--out`` is not given.

    Returns:
        The other settings, and the directory (``None`` when the file names none).

    Raises:
        TypeError: ``out`` is not a non-empty string.
    """
    rest: dict[str, Any] = {}
    out = None
    for raw_key, value in values.items():
        if normalize_key(raw_key, source) != OUTPUT_KEY:
            rest[raw_key] = value
        elif not isinstance(value, str) or not value:
            raise SettingTypeError(f"{source}: out = {value!r} has the wrong type: expected a "
                            "directory name")
        else:
            out = value
    return rest, out


def _split_compare_keys(values: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    task, compare = {}, {}
    for raw_key, value in values.items():
        key = normalize_key(raw_key, source)
        (compare if key in COMPARE_KEYS else task)[key] = value
    return task, compare


def build_run_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> Any:
    """The resolved configuration of ``samhess run``: defaults < config file < flags."""
    task, compare = _split_compare_keys(file_values, "config file")
    if compare:
        key = sorted(compare)[0]
        raise UsageError(f"config file: {key} applies to `samhess compare` only")
    merged = {**validate_values(task, source="config file"),
              **validate_values(flag_values, source="flags")}
    config = resolve(merged)
    _refuse_unread(flag_values, (config.optimizer,))
    return config


def parse_optimizer_list(value: object, source: str) -> tuple[str, ...]:
    """Optimizer names from a list or a comma-separated string, checked and without repeats."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = [name.strip() for name in value]
    else:
        raise SettingTypeError(
            f"{source}: optimizers = {value!r} has the wrong type: expected a list of names"
        )
    if not names or any(not name for name in names):
        raise invalid("optimizers", value, "needs comma-separated optimizer names", source)
    for name in names:
        if name not in OPTIMIZER_KINDS:
            raise invalid("optimizers", name, "must be one of " + ", ".join(OPTIMIZER_KINDS),
                          source)
    if len(set(names)) != len(names):
        raise invalid("optimizers", value, "names an optimizer twice", source)
    return tuple(names)


def build_compare_config(
    file_values: Mapping[str, Any], flag_values: Mapping[str, Any]
) -> CompareConfig:
    """The configuration of ``samhess compare``: defaults < config file < flags."""
    file_task, file_compare = _split_compare_keys(file_values, "config file")
    flag_task, flag_compare = _split_compare_keys(flag_values, "flags")
    for forbidden in ("optimizer", "seed"):
        for source, task in (("config file", file_task), ("flags", flag_task)):
            if forbidden in task:
                raise UsageError(
                    f"{source}: {forbidden} is set per member run by `samhess compare`; "
                    f"use {forbidden}s instead"
                )
    optimizers = DEFAULT_COMPARE_OPTIMIZERS
    seeds = DEFAULT_COMPARE_SEEDS
    for source, compare in (("config file", file_compare), ("flags", flag_compare)):
        if "optimizers" in compare:
            optimizers = parse_optimizer_list(compare["optimizers"], source)
        if "seeds" in compare:
            seeds = _COMPARE_SETTINGS["seeds"].check(compare["seeds"], source)
    merged = {**validate_values(file_task, source="config file"),
              **validate_values(flag_task, source="flags")}
    # Leave the per-optimizer settings open: each member run resolves them for its own kind.
    base = RunConfig(**merged)
    base = dataclasses.replace(base, **_resolve_task(base))
    compare_config = CompareConfig(optimizers=optimizers, seeds=seeds, task=base)
    _refuse_unread(flag_task, optimizers)
    for name in optimizers:  # cross-checks fail before any run starts
        compare_config.run_config(name, 0)
    return compare_config


def settings_markdown() -> str:
    """The table of every setting, as docs/cli.md shows it (generated from the declarations)."""
    lines = ["| key (flag) | commands | meaning | default |", "| --- | --- | --- | --- |"]
    settings = [*COMPARE_SETTINGS, *RUN_SETTINGS.values()]
    for group in GROUP_ORDER:
        for setting in (s for s in settings if s.group == group):
            lines.append(markdown_row(f"`{setting.name}` (`{setting.flag}`)",
                                      setting.scope.value, setting.help,
                                      default_in_words(setting)))
    return "\n".join(lines)


def optimizers_markdown() -> str:
    """The table of every optimizer kind, as docs/cli.md shows it (generated from the registry)."""
    lines = ["| name | report label | what | hyperparameters | a step |",
             "| --- | --- | --- | --- | --- |"]
    for kind in OPTIMIZER_KINDS.values():
        reads = ", ".join(f"`{name}`" for name in kind.reads)
        lines.append(markdown_row(f"`{kind.name}`", kind.label, kind.summary, reads, kind.passes))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m samhess.experiments.config: the tables of docs/cli.md
    print(optimizers_markdown(), settings_markdown(), sep="\n\n")
