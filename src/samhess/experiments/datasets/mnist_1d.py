"""MNIST-1D: ten 1-D digit templates, randomly shifted, scaled, sheared and noised.

Generated locally by the ``mnist1d`` package (never downloaded) with that package's default
arguments, which reproduce the published frozen data set: 5000 signals of length 40, the first
4000 for training and the last 1000 for testing.

Reference:
    S. Greydanus and D. Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024.
    https://arxiv.org/abs/2011.14439
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch

from samhess._validation import check_int_at_least

from .preprocessing import check_limit, first_rows
from .task import TaskData


@lru_cache(maxsize=4)
def _generate(num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Generation takes seconds; several runs in one process (``compare``) reuse it.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    # make_dataset seeds Python's and numpy's global generators; a caller's random streams must not
    # depend on whether this data set was loaded, so both states are put back afterwards.
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    arrays = (data["x"], data["y"], data["x_test"], data["y_test"])
    for array in arrays:
        array.setflags(write=False)
    return arrays


def load_mnist1d(
    *,
    data_dir=None,
    seed: int = 0,
    num_samples: int = 5000,
    limit: int | None = None,
    test_limit: int | None = None,
) -> TaskData:
    """MNIST-1D as ``(N, 1, 40)`` float32 signals and int64 labels 0-9.

    The signals are those of ``mnist1d.data.make_dataset`` (its own fixed seed, 42, and its
    standardization over the whole data set), reshaped channels-first so that 1-D convolutions
    apply.

    Args:
        data_dir: unused (the data are generated).
        seed: unused; the data set is the fixed published one whatever the run's seed.
        num_samples: total number of signals to generate (default 5000, the published size;
            80% train, 20% test). Smaller values give a different, smaller data set.
        limit: keep only the first ``limit`` training examples.
        test_limit: keep only the first ``test_limit`` test examples.
    """
    del data_dir, seed
    num_samples = check_int_at_least("num_samples", num_samples, 10)
    limit = check_limit("limit", limit)
    test_limit = check_limit("test_limit", test_limit)
    train_x, train_y, test_x, test_y = _generate(num_samples)
    from mnist1d.data import get_dataset_args

    def signals(x):
        return torch.tensor(x, dtype=torch.float32).unsqueeze(1)

    return TaskData(
        name="mnist1d",
        kind="classification",
        train_inputs=signals(first_rows(train_x, limit)),
        train_targets=torch.tensor(first_rows(train_y, limit), dtype=torch.int64),
        test_inputs=signals(first_rows(test_x, test_limit)),
        test_targets=torch.tensor(first_rows(test_y, test_limit), dtype=torch.int64),
        input_shape=(1, train_x.shape[1]),
        num_outputs=10,
        metadata={
            "source": "mnist1d.data.make_dataset (default arguments, generated locally)",
            "num_samples": num_samples,
            "generation_seed": get_dataset_args().seed,
        },
    )
