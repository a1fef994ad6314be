"""Subsetting, normalization and image-classification assembly shared by the data set loaders."""

from __future__ import annotations

import numpy as np
import torch

from samhess.errors import DataError
from samhess._validation import check_int_at_least, check_open_unit_interval

from .task import TaskData


def check_limit(name: str, value: int | None) -> int | None:
    """Return ``value`` if it is ``None`` (no limit) or an integer >= 1."""
    return None if value is None else check_int_at_least(name, value, 1)


def check_test_fraction(value: float) -> float:
    """Return the held-out fraction ``value`` if it lies strictly between 0 and 1."""
    return check_open_unit_interval("test_fraction", value)


def first_rows(array, limit: int | None):
    """The first ``limit`` rows of ``array`` (all of them when ``limit`` is ``None``).

    Taking a prefix rather than a random subset keeps a limited run a prefix of the full one, so a
    fast run on ``limit=n`` sees exactly the examples a full run sees first.
    """
    return array if limit is None else array[:limit]


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``images`` shaped ``(N, C, ...)``.

    Accumulated in float64 straight from the stored dtype, so that a 50 000-image uint8 array is
    never copied to floats as a whole.
    """
    axes = (0,) + tuple(range(2, images.ndim))
    mean = images.mean(axis=axes, dtype=np.float64)
    std = images.std(axis=axes, dtype=np.float64)
    # A constant channel (possible in tiny subsets) would divide by zero; leave it unscaled.
    std = np.where(std > 0, std, 1.0)
    return mean, std


def standardize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(images - mean) / std`` per channel, as a float32 tensor shaped like ``images``."""
    shape = (1, -1) + (1,) * (images.ndim - 2)
    scaled = (images.astype(np.float64) - mean.reshape(shape)) / std.reshape(shape)
    return torch.from_numpy(scaled.astype(np.float32))


def labels_tensor(labels, num_classes: int, source: str) -> torch.Tensor:
    """Class labels as an int64 tensor, refusing values outside ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels in {source} must be one-dimensional, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels in {source} must lie in [0, {num_classes}), "
            f"found values from {labels.min()} to {labels.max()}"
        )
    return torch.from_numpy(labels.astype(np.int64))


def standardized_image_task(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    *,
    limit: int | None,
    test_limit: int | None,
    source: str,
    normalization: dict | None = None,
    metadata: dict | None = None,
) -> TaskData:
    """A ``"classification"`` :class:`TaskData` from ``(images, labels)`` arrays per split.

    Images ``(N, C, ...)`` are standardized per channel with the statistics of the full training
    set (before ``limit``, so that a limited run sees the same pixels as a full one) and recorded
    in ``metadata["normalization"]`` together with the entries of ``normalization``; ``metadata``
    adds further entries.
    """
    (train_x, train_y), (test_x, test_y) = train, test
    mean, std = channel_statistics(train_x)
    return TaskData(
        name=name,
        kind="classification",
        train_inputs=standardize(first_rows(train_x, limit), mean, std),
        train_targets=labels_tensor(first_rows(train_y, limit), num_classes, source),
        test_inputs=standardize(first_rows(test_x, test_limit), mean, std),
        test_targets=labels_tensor(first_rows(test_y, test_limit), num_classes, source),
        input_shape=tuple(train_x.shape[1:]),
        num_outputs=num_classes,
        metadata={
            "source": source,
            "normalization": {"mean": mean.tolist(), "std": std.tolist(), **(normalization or {})},
            **(metadata or {}),
        },
    )
