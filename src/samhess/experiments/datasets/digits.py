"""scikit-learn's 8x8 handwritten digits, shipped with scikit-learn (no download).

Reference:
    E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository, 1998. https://doi.org/10.24432/C50P49
"""

from __future__ import annotations

from sklearn.datasets import load_digits as sklearn_load_digits
from sklearn.model_selection import train_test_split

from .preprocessing import check_limit, check_test_fraction, standardized_image_task
from .task import TaskData


def load_digits(
    *,
    data_dir=None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """1797 grey 8x8 images of the digits 0-9, as ``(N, 1, 8, 8)`` float32 images.

    The images are split into train and test sets stratified by class, shuffled by ``seed``
    (``sklearn.model_selection.train_test_split``), then standardized with the mean and standard
    deviation of the training pixels.

    Args:
        data_dir: unused (the data ship with scikit-learn).
        seed: decides the split and the order of the examples.
        test_fraction: share of the 1797 examples held out (default 0.2: 1437 train, 360 test).
        limit: keep only the first ``limit`` training examples.
        test_limit: keep only the first ``test_limit`` test examples.
    """
    del data_dir
    test_fraction = check_test_fraction(test_fraction)
    limit = check_limit("limit", limit)
    test_limit = check_limit("test_limit", test_limit)
    images, labels = sklearn_load_digits(return_X_y=True)
    images = images.reshape(-1, 1, 8, 8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return standardized_image_task(
        "digits", (train_x, train_y), (test_x, test_y), 10, limit=limit, test_limit=test_limit,
        source="sklearn.datasets.load_digits",
        metadata={"split": {"test_fraction": test_fraction, "stratified": True, "seed": seed}},
    )
