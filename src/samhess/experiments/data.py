"""Data sets for experiments: :func:`load_dataset` by name, returning a :class:`TaskData`.

Embedded (no files, no network): ``"digits"``, ``"mnist1d"``, ``"synthetic"``, ``"chars"``.
Read from local files under ``data_dir``: ``"cifar10"``, ``"cifar100"``, ``"mnist"``,
``"fashion-mnist"``, ``"text"``. ``docs/data.md`` describes each one, its size and its files.
"""

from __future__ import annotations

from collections.abc import Callable

from samhess._validation import check_choice, check_int_at_least

from .datasets.characters import load_chars, load_text
from .datasets.cifar import load_cifar10, load_cifar100
from .datasets.digits import load_digits
from .datasets.idx import load_fashion_mnist, load_mnist
from .datasets.mnist_1d import load_mnist1d
from .datasets.options import check_known_options, keyword_defaults
from .datasets.synthetic import load_synthetic, synthetic_teacher
from .datasets.task import TASK_KINDS, TaskData

_LOADERS: dict[str, Callable[..., TaskData]] = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "synthetic": load_synthetic,
    "chars": load_chars,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "text": load_text,
}

#: Every name :func:`load_dataset` accepts.
DATASET_NAMES = tuple(_LOADERS)

#: The data sets that need no files.
EMBEDDED_DATASETS = ("digits", "mnist1d", "synthetic", "chars")

#: The data sets whose examples are token sequences (character-level language modelling).
LANGUAGE_MODEL_DATASETS = ("chars", "text")


def dataset_options(name: str) -> dict[str, object]:
    """The options ``name`` accepts beyond ``data_dir`` and ``seed``, with their defaults."""
    name = check_choice("dataset", name, DATASET_NAMES)
    return keyword_defaults(_LOADERS[name], exclude=("data_dir", "seed"))


def load_dataset(name: str, *, data_dir=None, seed: int = 0, **options) -> TaskData:
    """Load the data set ``name`` into memory.

    Every data set accepts ``limit`` (keep the first ``n`` training examples, for fast runs) and
    ``test_limit``; the others are listed by :func:`dataset_options`. Loading is deterministic:
    the same name, seed and options give identical tensors.

    Args:
        name: one of :data:`DATASET_NAMES`.
        data_dir: where the file-based data sets look for their files (ignored by embedded ones).
        seed: decides the split and example order where the source has no fixed split
            (``digits``, ``synthetic``, the training-window order of ``chars`` and ``text``);
            sources with a published split ignore it.
        **options: data set specific options.

    Returns:
        The data set as tensors (see :class:`TaskData`).

    Raises:
        ValueError: unknown name or option, a bad option value, missing or corrupt files.
    """
    name = check_choice("dataset", name, DATASET_NAMES)
    seed = check_int_at_least("seed", seed, 0)
    check_known_options("dataset", name, options, dataset_options(name))
    return _LOADERS[name](data_dir=data_dir, seed=seed, **options)


__all__ = [
    "DATASET_NAMES",
    "EMBEDDED_DATASETS",
    "LANGUAGE_MODEL_DATASETS",
    "TASK_KINDS",
    "TaskData",
    "dataset_options",
    "load_dataset",
    "synthetic_teacher",
]
