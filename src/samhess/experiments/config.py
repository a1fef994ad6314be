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

Every problem is a ``ValueError`` (or ``TypeError``) whose one-line message names the key and
the value, so the command line can print it as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samhess._validation import check_choice

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


OPTIMIZER_NAMES: tuple[str, ...] = (
    "sgd", "sam", "usam", "asam", "ire", "sam-ire", "adamw", "admire",
)
"""Optimizers a run can use: SGD, SAM and its unnormalized (USAM) and adaptive (ASAM) forms,
IRE over SGD, IRE over SAM, AdamW, and IRE over AdamW (AdmIRE)."""

DTYPE_NAMES: tuple[str, ...] = ("float32", "float64")
#: Where SAM's ascent comes from when the global batch is split across ranks (torchrun): the
#: global gradient (the single-process step on the whole batch) or each rank's own shard
#: (per-replica perturbations, m-sharpness). One process: the same step either way.
SAM_PERTURBATIONS: tuple[str, ...] = ("global", "per-replica")
DEVICE_NAMES: tuple[str, ...] = ("cpu", "cuda", "auto")

#: Learning rate used when none is given: Adam-type optimizers want a much smaller one.
DEFAULT_LR = {"adamw": 1e-3, "admire": 1e-3}
DEFAULT_LR_OTHERS = 0.1
#: Perturbation radius used when none is given. ASAM's radius is relative to |w|, so larger
#: (Kwon et al., ICML 2021, use 0.5 to 2.0).
DEFAULT_RHO = {"asam": 0.5}
DEFAULT_RHO_OTHERS = 0.05

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

#: Keys that change where output goes or how it is shown, not what the run computes; ``--resume``
#: does not require them to match the stored configuration.
PRESENTATION_KEYS = frozenset({"data_dir", "tensorboard"})

#: The config-file key of the output directory (``--out``), read by the command line.
OUTPUT_KEY = "out"

#: Keys that only ``samhess compare`` reads.
COMPARE_KEYS = frozenset({"optimizers", "seeds"})
DEFAULT_COMPARE_OPTIMIZERS: tuple[str, ...] = ("sgd", "sam", "ire", "sam-ire")
DEFAULT_COMPARE_SEEDS = 3


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run.

    Attributes:
        optimizer: one of :data:`OPTIMIZER_NAMES`.
        dataset: a name from ``samhess.experiments.data.DATASET_NAMES``.
        model: a name from ``samhess.experiments.models.MODEL_NAMES``; ``None`` picks the
            dataset's default model.
        steps: optimizer steps to take.
        seed: seeds the model's initialization, the batch order and every estimator.
        batch_size: training mini-batch size.
        lr: learning rate; ``None`` picks 0.1, or 1e-3 for AdamW and AdmIRE.
        momentum: SGD momentum (SGD-based optimizers only).
        weight_decay: L2 weight decay (SGD) or decoupled weight decay (AdamW).
        rho: SAM's perturbation radius; ``None`` picks 0.05, or 0.5 for ASAM.
        kappa: IRE's amplification of the step on flat coordinates.
        gamma: IRE's share of coordinates called flat.
        refresh_every: steps between IRE mask refreshes.
        start_step: the step from which IRE amplifies (before it, IRE is its base optimizer).
        track_every: steps between tracked records (a record is also taken at steps 0 and
            ``steps``).
        checkpoint_every: steps between checkpoints; ``None`` checkpoints at every record.
        top_k: Hessian eigenvalues recorded per record (lambda_max first); also the number of
            sharp directions in the sharp/flat gain.
        trace_matvecs: Hessian-vector products spent on the Hutch++ trace estimate; ``None``
            picks 30, or 15 for :data:`LARGE_MODELS` (:func:`default_tracking`).
        tracking_batch_size: examples (sequences, for token data) in the fixed batch the
            curvature is measured on; ``None`` picks 256, 64 for :data:`LARGE_MODELS`, and
            4096 tokens' worth of sequences for language models (:func:`default_tracking`).
        eval_examples: train/test examples the losses and accuracies are measured on
            (``None``: all of them).
        data_dir: directory holding data sets read from files.
        dtype: parameter and input precision.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA where available).
        taylor_rhos: radii of the final Taylor check.
        density_probes: random probes of the final spectral density (stochastic Lanczos
            quadrature).
        density_lanczos_steps: Lanczos steps per probe of the spectral density.
        tensorboard: also write TensorBoard event files.
        sam_perturbation: under ``torchrun``, ``"global"`` (SAM's ascent from the global
            gradient: the single-process step on the whole batch) or ``"per-replica"`` (each
            rank's ascent from its own shard's gradient, the first pass inside DDP's
            ``no_sync``); see ``docs/distributed.md``.
    """

    optimizer: str = "sgd"
    dataset: str = "digits"
    model: str | None = None
    steps: int = 1000
    seed: int = 0
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    rho: float | None = None
    kappa: float = 1.0
    gamma: float = 0.8
    refresh_every: int = 10
    start_step: int = 0
    track_every: int = 50
    checkpoint_every: int | None = None
    top_k: int = 3
    trace_matvecs: int | None = None
    tracking_batch_size: int | None = None
    eval_examples: int | None = None
    data_dir: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    taylor_rhos: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    density_probes: int = 2
    density_lanczos_steps: int = 30
    tensorboard: bool = False
    sam_perturbation: str = "global"

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON data (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["taylor_rhos"] = list(self.taylor_rhos)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Validate ``values`` (as read back from ``config.json``) into a config."""
        return resolve(validate_values(values, source="config.json"))

    def identity(self) -> dict[str, Any]:
        """The values that make two runs the same run (presentation keys left out)."""
        return {k: v for k, v in self.to_dict().items() if k not in PRESENTATION_KEYS}


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: the same task for several optimizers and seeds."""

    optimizers: tuple[str, ...] = DEFAULT_COMPARE_OPTIMIZERS
    seeds: int = DEFAULT_COMPARE_SEEDS
    task: RunConfig = field(default_factory=RunConfig)

    def run_config(self, optimizer: str, seed: int) -> RunConfig:
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


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}

# The type each key accepts, as (python types, description for messages).
_INT = ((int,), "an integer")
_REAL = ((int, float), "a number")
_STR = ((str,), "a string")
_BOOL = ((bool,), "true or false")
_KEY_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "optimizer": _STR,
    "dataset": _STR,
    "model": _STR,
    "steps": _INT,
    "seed": _INT,
    "batch_size": _INT,
    "lr": _REAL,
    "momentum": _REAL,
    "weight_decay": _REAL,
    "rho": _REAL,
    "kappa": _REAL,
    "gamma": _REAL,
    "refresh_every": _INT,
    "start_step": _INT,
    "track_every": _INT,
    "checkpoint_every": _INT,
    "top_k": _INT,
    "trace_matvecs": _INT,
    "tracking_batch_size": _INT,
    "eval_examples": _INT,
    "data_dir": _STR,
    "dtype": _STR,
    "device": _STR,
    "taylor_rhos": ((list, tuple), "a list of numbers"),
    "density_probes": _INT,
    "density_lanczos_steps": _INT,
    "tensorboard": _BOOL,
    "sam_perturbation": _STR,
}
_NULLABLE = {"model", "lr", "rho", "checkpoint_every", "eval_examples", "data_dir",
             "trace_matvecs", "tracking_batch_size"}
assert set(_KEY_TYPES) == set(_FIELDS), "every RunConfig field needs a declared type"


def _label(key: str, value: object, source: str) -> str:
    """How a setting is named in messages: as the flag a user typed, or as the file's key."""
    if source == "flags":
        return f"--{key.replace('_', '-')} {value!r}"
    return f"{source}: {key} = {value!r}"


def _bad(key: str, value: object, requirement: str, source: str) -> ValueError:
    return ValueError(f"{_label(key, value, source)} is invalid: {requirement}")


def _check_type(key: str, value: object, source: str) -> object:
    if value is None and key in _NULLABLE:
        return None
    types, description = _KEY_TYPES[key]
    # bool is an int in Python; a flag written `steps = true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"{_label(key, value, source)} has the wrong type: expected {description}")
    if not isinstance(value, types):
        raise TypeError(f"{_label(key, value, source)} has the wrong type: expected {description}")
    if types == _REAL[0]:
        value = float(value)
        if not math.isfinite(value):
            raise _bad(key, value, "must be finite", source)
    return value


_AT_LEAST_ONE = {
    "steps", "batch_size", "refresh_every", "track_every", "checkpoint_every", "top_k",
    "trace_matvecs", "tracking_batch_size", "eval_examples", "density_probes",
    "density_lanczos_steps",
}
_AT_LEAST_ZERO_INT = {"seed", "start_step"}
_NONNEGATIVE = {"momentum", "weight_decay", "rho", "kappa"}


def _check_value(key: str, value: object, source: str) -> object:
    """Range and choice checks for one typed value."""
    if value is None:
        return None
    if key in _AT_LEAST_ONE and value < 1:
        raise _bad(key, value, "must be >= 1", source)
    if key in _AT_LEAST_ZERO_INT and value < 0:
        raise _bad(key, value, "must be >= 0", source)
    if key in _NONNEGATIVE and value < 0:
        raise _bad(key, value, "must be >= 0", source)
    if key == "lr" and value <= 0:
        raise _bad(key, value, "must be > 0", source)
    if key == "momentum" and value >= 1:
        raise _bad(key, value, "must be < 1", source)
    if key == "gamma" and not 0.0 < value < 1.0:
        raise _bad(key, value, "must lie in the open interval (0, 1)", source)
    if key == "trace_matvecs" and value < 3:
        # Hutch++ splits its budget in three parts (sketch, projection, residual).
        raise _bad(key, value, "must be >= 3 (Hutch++ splits it in three)", source)
    if key == "density_lanczos_steps" and value < 2:
        raise _bad(key, value, "must be >= 2", source)
    if key == "optimizer":
        _check_named(key, value, OPTIMIZER_NAMES, source)
    if key == "dtype":
        _check_named(key, value, DTYPE_NAMES, source)
    if key == "device":
        _check_named(key, value, DEVICE_NAMES, source)
    if key == "sam_perturbation":
        _check_named(key, value, SAM_PERTURBATIONS, source)
    if key == "dataset":
        from samhess.experiments.data import DATASET_NAMES

        _check_named(key, value, tuple(DATASET_NAMES), source)
    if key == "model":
        from samhess.experiments.models import MODEL_NAMES

        _check_named(key, value, tuple(MODEL_NAMES), source)
    if key == "taylor_rhos":
        if len(value) < 2:
            raise _bad(key, list(value), "needs at least two radii to fit an order", source)
        rhos = []
        for rho in value:
            if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
                raise _bad(key, list(value), "every radius must be a number > 0", source)
            rhos.append(float(rho))
        return tuple(rhos)
    return value


def _check_named(key: str, value: str, choices: tuple[str, ...], source: str) -> None:
    try:
        check_choice(key, value, choices)
    except ValueError:
        raise _bad(key, value, "must be one of " + ", ".join(choices), source) from None


def normalize_key(key: object, source: str) -> str:
    """``weight-decay`` and ``weight_decay`` name the same key."""
    if not isinstance(key, str):
        raise TypeError(f"{source}: key {key!r} is not a string")
    return key.replace("-", "_")


def validate_values(values: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Check every (key, value) of a run's settings; return them typed.

    Raises:
        ValueError: an unknown key or a value out of range, named in the message.
        TypeError: a value of the wrong type, named in the message.
    """
    out: dict[str, Any] = {}
    # Names that need the data and model registries (and so torch) are checked last, so a
    # plain typo is reported at once.
    ordered = sorted(values.items(), key=lambda item: str(item[0]) in ("dataset", "model"))
    for raw_key, value in ordered:
        key = normalize_key(raw_key, source)
        if key not in _FIELDS:
            close = difflib.get_close_matches(
                key, list(_FIELDS) + sorted(COMPARE_KEYS) + [OUTPUT_KEY], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{source}: unknown key {raw_key!r}{hint}")
        value = _check_type(key, value, source)
        out[key] = _check_value(key, value, source)
    return out


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

    large = model in LARGE_MODELS or dataset in LANGUAGE_MODEL_DATASETS
    if dataset in LANGUAGE_MODEL_DATASETS:
        batch = max(1, DEFAULT_TRACKING_TOKENS // int(dataset_options(dataset)["seq_len"]))
    else:
        batch = DEFAULT_TRACKING_BATCH_LARGE if large else DEFAULT_TRACKING_BATCH
    return batch, DEFAULT_TRACE_MATVECS_LARGE if large else DEFAULT_TRACE_MATVECS


def resolve(values: Mapping[str, Any]) -> RunConfig:
    """Fill in defaults and optimizer-dependent choices; check the values against each other."""
    config = RunConfig(**values)
    changes: dict[str, Any] = {}
    if config.model is None:
        from samhess.experiments.models import default_model_for

        changes["model"] = default_model_for(config.dataset)
    if config.lr is None:
        changes["lr"] = DEFAULT_LR.get(config.optimizer, DEFAULT_LR_OTHERS)
    if config.rho is None:
        changes["rho"] = DEFAULT_RHO.get(config.optimizer, DEFAULT_RHO_OTHERS)
    if config.checkpoint_every is None:
        changes["checkpoint_every"] = config.track_every
    if config.tracking_batch_size is None or config.trace_matvecs is None:
        batch, matvecs = default_tracking(config.dataset, changes.get("model", config.model))
        if config.tracking_batch_size is None:
            changes["tracking_batch_size"] = batch
        if config.trace_matvecs is None:
            changes["trace_matvecs"] = matvecs
    config = dataclasses.replace(config, **changes)
    if config.momentum > 0 and config.optimizer in ("adamw", "admire"):
        raise ValueError(
            f"momentum = {config.momentum!r} is invalid for optimizer {config.optimizer!r}: "
            "AdamW has no SGD momentum (leave it at 0)"
        )
    return config


#: A YAML 1.2 float in exponent form without a dot or without an exponent sign (``1e-3``,
#: ``5E-3``, ``1e5``, ``1.0e5``, ``.5e-3``), which YAML 1.1 (PyYAML) leaves a string.
_YAML_EXPONENT_FLOAT = r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$"


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """PyYAML's safe loader reading exponent-form numbers as floats.

    PyYAML follows YAML 1.1, whose float pattern needs a dot and a signed exponent, so
    ``lr: 1e-3`` would load as the string ``'1e-3'``; YAML 1.2 (and TOML) read it as a number.
    The extra implicit resolver adds the YAML 1.2 forms; everything else resolves as before.
    """
    import re

    import yaml

    class ExponentFloatLoader(yaml.SafeLoader):
        pass

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
        raise ValueError(f"config file {str(path)!r} must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {str(path)!r} cannot be read: {exc}") from None
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {reason}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of key = value settings")
    for key, value in data.items():
        if isinstance(value, dict):
            raise ValueError(
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
            raise TypeError(f"{source}: out = {value!r} has the wrong type: expected a "
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


def build_run_config(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> RunConfig:
    """The resolved configuration of ``samhess run``: defaults < config file < flags."""
    task, compare = _split_compare_keys(file_values, "config file")
    if compare:
        key = sorted(compare)[0]
        raise ValueError(f"config file: {key} applies to `samhess compare` only")
    merged = {**validate_values(task, source="config file"),
              **validate_values(flag_values, source="flags")}
    return resolve(merged)


def parse_optimizer_list(value: object, source: str) -> tuple[str, ...]:
    """Optimizer names from a list or a comma-separated string, checked and without repeats."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = [name.strip() for name in value]
    else:
        raise TypeError(
            f"{source}: optimizers = {value!r} has the wrong type: expected a list of names"
        )
    if not names or any(not name for name in names):
        raise _bad("optimizers", value, "needs comma-separated optimizer names", source)
    for name in names:
        if name not in OPTIMIZER_NAMES:
            raise _bad("optimizers", name, "must be one of " + ", ".join(OPTIMIZER_NAMES), source)
    if len(set(names)) != len(names):
        raise _bad("optimizers", value, "names an optimizer twice", source)
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
                raise ValueError(
                    f"{source}: {forbidden} is set per member run by `samhess compare`; "
                    f"use {forbidden}s instead"
                )
    compare = {**file_compare, **flag_compare}
    optimizers = DEFAULT_COMPARE_OPTIMIZERS
    if "optimizers" in compare:
        source = "flags" if "optimizers" in flag_compare else "config file"
        optimizers = parse_optimizer_list(compare["optimizers"], source)
    seeds = DEFAULT_COMPARE_SEEDS
    if "seeds" in compare:
        source = "flags" if "seeds" in flag_compare else "config file"
        seeds = compare["seeds"]
        if isinstance(seeds, bool) or not isinstance(seeds, int):
            raise TypeError(f"{source}: seeds = {seeds!r} has the wrong type: expected an integer")
        if seeds < 1:
            raise _bad("seeds", seeds, "must be >= 1", source)
    merged = {**validate_values(file_task, source="config file"),
              **validate_values(flag_task, source="flags")}
    # Leave lr and rho open: each member run resolves them for its own optimizer.
    base = RunConfig(**merged)
    if base.model is None:
        from samhess.experiments.models import default_model_for

        base = dataclasses.replace(base, model=default_model_for(base.dataset))
    if base.checkpoint_every is None:
        base = dataclasses.replace(base, checkpoint_every=base.track_every)
    compare_config = CompareConfig(optimizers=optimizers, seeds=seeds, task=base)
    for name in optimizers:  # cross-checks (e.g. momentum with AdamW) fail before any run starts
        compare_config.run_config(name, 0)
    return compare_config
