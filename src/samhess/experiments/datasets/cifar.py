"""CIFAR-10 and CIFAR-100 from the "python version" archives, read from local files.

Expected layout (the archives' own, unpacked in ``data_dir``)::

    data_dir/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch
    data_dir/cifar-100-python/train, test

Each file is a pickled dict with ``b"data"``, a ``(N, 3072)`` uint8 array (1024 red, then 1024
green, then 1024 blue values of a 32x32 image in row-major order), and ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100). Pickles can run arbitrary code when loaded,
so these are read with an unpickler that only rebuilds numpy arrays.

Reference:
    A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
    University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from samhess.errors import DataError
from samhess._validation import check_choice

from .files import locate, require_data_dir
from .preprocessing import check_limit, standardized_image_task
from .task import TaskData

_IMAGE_SHAPE = (3, 32, 32)

# Pixels are standardized on the 0-255 scale in which the files store them.
_PIXEL_SCALE = {"scale": 255}

# What a CIFAR batch needs to be rebuilt: numpy arrays (pickled by numpy 1 or 2, protocol 2 to 5)
# and, for files written by Python 3 at protocol 2, bytes objects.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` from one CIFAR pickle file.

    Raises:
        ValueError: the file is not a CIFAR batch (unreadable pickle, missing keys, wrong sizes).
    """
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # any unpickling failure means the same thing: not a CIFAR batch
        raise DataError(f"{path} is not a readable CIFAR pickle: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}, "
            f"got {keys}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    row = int(np.prod(_IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise DataError(
            f"{path}: b'data' must be a uint8 array of shape (N, {row}), "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {label_key!r} holds {labels.size} labels for {data.shape[0]} images"
        )
    return data.reshape(-1, *_IMAGE_SHAPE), labels


def load_cifar10(
    *, data_dir=None, seed: int = 0, limit: int | None = None, test_limit: int | None = None
) -> TaskData:
    """CIFAR-10: 50 000 training and 10 000 test 32x32 colour images in 10 classes.

    Images come out as ``(N, 3, 32, 32)`` float32, standardized per channel with the training
    set's mean and standard deviation; labels as int64.

    Args:
        data_dir: directory holding ``cifar-10-batches-py/`` (or the batch files themselves).
        seed: unused; the published split is kept.
        limit: keep only the first ``limit`` training images (in file order).
        test_limit: keep only the first ``test_limit`` test images.
    """
    del seed
    limit, test_limit = check_limit("limit", limit), check_limit("test_limit", test_limit)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    root = require_data_dir("cifar10", data_dir, "cifar-10-batches-py/" + ", ".join(names))
    files = locate("cifar10", [root / "cifar-10-batches-py", root], names)
    batches = [read_batch(files[n], b"labels") for n in names[:5]]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    test = read_batch(files["test_batch"], b"labels")
    return standardized_image_task(
        "cifar10", train, test, 10, limit=limit, test_limit=test_limit,
        source=str(files["test_batch"].parent), normalization=_PIXEL_SCALE,
    )


def load_cifar100(
    *,
    data_dir=None,
    seed: int = 0,
    labels: str = "fine",
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """CIFAR-100: 50 000 training and 10 000 test 32x32 colour images in 100 classes.

    Args:
        data_dir: directory holding ``cifar-100-python/`` (or the ``train`` and ``test`` files).
        seed: unused; the published split is kept.
        labels: ``"fine"`` (100 classes, the usual benchmark) or ``"coarse"`` (20 superclasses).
        limit: keep only the first ``limit`` training images (in file order).
        test_limit: keep only the first ``test_limit`` test images.
    """
    del seed
    labels = check_choice("labels", labels, ("fine", "coarse"))
    limit, test_limit = check_limit("limit", limit), check_limit("test_limit", test_limit)
    names = ["train", "test"]
    root = require_data_dir("cifar100", data_dir, "cifar-100-python/train, test")
    files = locate("cifar100", [root / "cifar-100-python", root], names)
    key = b"fine_labels" if labels == "fine" else b"coarse_labels"
    train = read_batch(files["train"], key)
    test = read_batch(files["test"], key)
    return standardized_image_task(
        "cifar100", train, test, 100 if labels == "fine" else 20, limit=limit,
        test_limit=test_limit, source=str(files["test"].parent), normalization=_PIXEL_SCALE,
        metadata={"labels": labels},
    )
