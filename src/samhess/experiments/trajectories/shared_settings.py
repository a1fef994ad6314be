"""The settings of the experiments, declared once; an experiment takes them with its defaults.

Every experiment trains on the same problem (:mod:`~samhess.experiments.trajectories.problem`)
and most start from the same near-interpolating point
(:mod:`~samhess.experiments.trajectories.interpolating`), so those settings are shared as they
are. Training and recording settings are taken with an experiment's own default
(:func:`with_default`); the optimizer hyperparameters reuse the declarations of
:mod:`samhess.experiments.optimizer_kinds` (help text and bounds), so ``--rho`` means and checks
the same under ``samhess run`` and here. This module imports nothing heavy: the command line
builds every experiment's flags from it before torch loads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from samhess.experiments.optimizer_kinds import GAMMA, KAPPA, LR, REFRESH_EVERY, RHO
from samhess.experiments.settings import (
    Bound, Setting, ValueKind, at_least, at_most, below, greater_than,
)

__all__ = ["PROBLEM_SETTINGS", "START_SETTINGS", "with_default", "whole_numbers",
           "DIGITS_TRAIN_EXAMPLES", "EXAMPLES", "WIDTH", "SEED", "STEPS", "LEARNING_RATE",
           "LEARNING_RATES", "RADIUS", "BATCH_SIZE", "AMPLIFICATION", "FLAT_SHARE",
           "MASK_REFRESH_EVERY", "RECORD_EVERY", "EIGENVECTOR_EVERY", "CHECKPOINT_EVERY",
           "MICRO_BATCH_SIZES"]

PROBLEM_GROUP, START_GROUP, TRAINING_GROUP, RECORDING_GROUP, OUTPUT_GROUP = (
    "problem", "starting point", "training", "recording", "output")
#: Examples in the digits training split (80% of 1,797).
DIGITS_TRAIN_EXAMPLES = 1437


def with_default(setting: Setting, default: Any, **changes: Any) -> Setting:
    """``setting`` with an experiment's own default (and any other field changed)."""
    fields = {"default": default, "per_optimizer": False, "nullable": False,
              "resolved_default": None}
    return dataclasses.replace(setting, **{**fields, **changes})


def whole_numbers() -> Bound:
    return Bound(lambda value: float(value).is_integer(), "must be a whole number")


# -- the problem and its starting point -------------------------------------------------------

EXAMPLES = Setting("examples", ValueKind.INT, 128, "digits training examples, regressed onto "
                   "their one-hot labels with the mean squared error", PROBLEM_GROUP, "N",
                   (at_least(2), at_most(DIGITS_TRAIN_EXAMPLES)))
WIDTH = Setting("width", ValueKind.INT, 32, "hidden width of the tanh MLP 64-width-10",
                PROBLEM_GROUP, "W", (at_least(1),))
SEED = Setting("seed", ValueKind.INT, 0, "seeds the digits split, the initial weights, the "
               "batch order and every estimator", PROBLEM_GROUP, "S",
               (at_least(0), below(2**32)))
PROBLEM_SETTINGS = (EXAMPLES, WIDTH, SEED)

START_SETTINGS = (
    Setting("interpolation_lr", ValueKind.REAL, 0.2, "learning rate of the full-batch gradient "
            "descent that produces the near-interpolating point", START_GROUP, "LR",
            (greater_than(0),)),
    Setting("interpolation_loss", ValueKind.REAL, 1e-4, "train loss at which that descent "
            "stops", START_GROUP, "L", (greater_than(0),)),
    Setting("interpolation_max_steps", ValueKind.INT, 200_000, "the most steps that descent "
            "may take", START_GROUP, "N", (at_least(1),)),
    Setting("cache_dir", ValueKind.STR, None, "directory of cached near-interpolating points",
            OUTPUT_GROUP, "DIR", nullable=True, identity=False,
            resolved_default="$XDG_CACHE_HOME/samhess, else ~/.cache/samhess"),
)


# -- training and recording -----------------------------------------------------------------------

def _training(setting: Setting) -> Setting:
    return with_default(setting, setting.default, group=TRAINING_GROUP)


STEPS = Setting("steps", ValueKind.INT, 1000, "training steps of each trajectory",
                TRAINING_GROUP, "N", (at_least(1),))
LEARNING_RATE = _training(LR)
LEARNING_RATES = Setting("lrs", ValueKind.REALS, (0.5, 1.0), "learning rates, one pair of "
                         "trajectories each (comma-separated)", TRAINING_GROUP, "LRS",
                         (greater_than(0),), min_items=1)
RADIUS = _training(RHO)
BATCH_SIZE = Setting("batch_size", ValueKind.INT, 1, "examples per step", TRAINING_GROUP, "B",
                     (at_least(1),))
MICRO_BATCH_SIZES = Setting("micro_batch_sizes", ValueKind.REALS, (1, 8, 32, 128),
                            "examples per perturbation, one trajectory each (comma-separated; "
                            "each divides --batch-size)", TRAINING_GROUP, "MS",
                            (at_least(1), whole_numbers()), min_items=2)
AMPLIFICATION = _training(KAPPA)
FLAT_SHARE = _training(GAMMA)
MASK_REFRESH_EVERY = _training(REFRESH_EVERY)
RECORD_EVERY = Setting("record_every", ValueKind.INT, 100, "steps between records",
                       RECORDING_GROUP, "K", (at_least(1),))
EIGENVECTOR_EVERY = Setting("eigenvector_every", ValueKind.INT, 10, "steps between "
                            "recomputations of the top eigenvector v_1", RECORDING_GROUP, "K",
                            (at_least(1),))
CHECKPOINT_EVERY = Setting("checkpoint_every", ValueKind.INT, 500, "steps between checkpoints",
                           RECORDING_GROUP, "K", (at_least(1),))
