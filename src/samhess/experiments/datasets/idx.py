"""MNIST and Fashion-MNIST from their IDX files, read from local files.

Expected files, plain or gzipped (``.gz``), in ``data_dir`` or in torchvision's layout
(``data_dir/MNIST/raw``, ``data_dir/FashionMNIST/raw``)::

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

IDX format: two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
32-bit integer, then the values in row-major order, big-endian.

References:
    Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits", 1998
    (format description). H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset
    for Benchmarking Machine Learning Algorithms", 2017. https://arxiv.org/abs/1708.07747
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samhess.errors import DataError
from .files import locate, read_bytes, require_data_dir
from .preprocessing import check_limit, standardized_image_task
from .task import TaskData

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, source: str = "IDX data") -> np.ndarray:
    """The array stored in the IDX bytes ``raw``.

    Raises:
        ValueError: bad magic number, unknown type code, or a length that does not match the
            header.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source} is not an IDX file (its first two bytes must be zero)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise DataError(f"{source} has unknown IDX type code 0x{type_code:02X}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source} is truncated inside its IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{source} holds {len(raw)} bytes but its IDX header (shape {shape}, "
            f"{dtype.name}) implies {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _read_split(files: dict[str, Path], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = files[f"{prefix}-images-idx3-ubyte"]
    labels_path = files[f"{prefix}-labels-idx1-ubyte"]
    images = parse_idx(read_bytes(images_path), str(images_path))
    labels = parse_idx(read_bytes(labels_path), str(labels_path))
    if images.ndim != 3:
        raise DataError(f"{images_path} must hold images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} holds labels of shape {labels.shape} for {images.shape[0]} images "
            f"in {images_path}"
        )
    return images[:, None], labels


def _load_idx_images(name, torchvision_dir, data_dir, limit, test_limit) -> TaskData:
    limit, test_limit = check_limit("limit", limit), check_limit("test_limit", test_limit)
    root = require_data_dir(name, data_dir, ", ".join(IDX_FILES) + " (or .gz)")
    files = locate(name, [root, root / torchvision_dir / "raw"], list(IDX_FILES), gzip_ok=True)
    train_x, train_y = _read_split(files, "train")
    test_x, test_y = _read_split(files, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: training images are {train_x.shape[2:]} but test images {test_x.shape[2:]}"
        )
    return standardized_image_task(
        name, (train_x, train_y), (test_x, test_y), 10, limit=limit, test_limit=test_limit,
        source=str(files[IDX_FILES[0]].parent), normalization={"scale": 255},
    )


def load_mnist(
    *, data_dir=None, seed: int = 0, limit: int | None = None, test_limit: int | None = None
) -> TaskData:
    """MNIST: 60 000 training and 10 000 test 28x28 grey digits, ``(N, 1, 28, 28)`` float32.

    Pixels are standardized with the training set's mean and standard deviation.

    Args:
        data_dir: directory holding the four IDX files (or ``MNIST/raw/`` with them).
        seed: unused; the published split is kept.
        limit: keep only the first ``limit`` training images (in file order).
        test_limit: keep only the first ``test_limit`` test images.
    """
    del seed
    return _load_idx_images("mnist", "MNIST", data_dir, limit, test_limit)


def load_fashion_mnist(
    *, data_dir=None, seed: int = 0, limit: int | None = None, test_limit: int | None = None
) -> TaskData:
    """Fashion-MNIST: 60 000 training and 10 000 test 28x28 grey images of clothing, 10 classes.

    Same files and format as MNIST (see :func:`load_mnist`); torchvision's layout is
    ``FashionMNIST/raw/``.
    """
    del seed
    return _load_idx_images("fashion-mnist", "FashionMNIST", data_dir, limit, test_limit)
