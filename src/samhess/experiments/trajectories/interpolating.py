"""The near-interpolating point: full-batch gradient descent to a small train loss, cached.

Its settings are declared in :mod:`samhess.experiments.trajectories.shared_settings`
(``interpolation_lr``, ``interpolation_loss``, ``interpolation_max_steps``, ``cache_dir``).

Wen, Ma & Li (ICLR 2023) and Wang et al. (NeurIPS 2024) describe what SAM and IRE do *near* the
manifold of minimizers. The experiments that test them start from a point close to it: the
problem's model (:mod:`~samhess.experiments.trajectories.problem`) trained from its seeded
initialization by full-batch gradient descent with learning rate ``interpolation_lr`` until the
train loss is at most ``interpolation_loss``; the point is the weights at which the loss was
first measured at or below it.

The descent takes tens of thousands of steps, so its result is cached: a file
``interpolating-<key>.pt`` in ``cache_dir``, ``<key>`` the start of the SHA-256 of the settings
that determine the point (examples, width, seed, learning rate, target loss, step limit). The
file also holds those settings, and a file whose settings differ from the ones asked for is an
error, never a silent substitute. Writes are atomic (:mod:`samhess.experiments.runfiles`), so a
killed descent leaves no cache entry and the next run descends again, to the same point.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from samhess.errors import DivergenceError, RunFileError, UsageError
from samhess.experiments import runfiles
from samhess.experiments.progress import progress_enabled
from samhess.experiments.trajectories.problem import Problem

__all__ = ["InterpolatingPoint", "interpolating_point", "cache_directory", "point_key"]

CACHE_FORMAT = "samhess-interpolating-point-1"

#: The settings that determine the point, in the order of its key.
_KEY_SETTINGS = ("examples", "width", "seed", "interpolation_lr", "interpolation_loss",
                 "interpolation_max_steps")


@dataclass(frozen=True)
class InterpolatingPoint:
    """The starting point and how it was reached.

    Attributes:
        state: the model's ``state_dict`` at the point.
        steps: gradient-descent steps taken from the initialization.
        loss: the train loss at the point.
    """

    state: dict[str, torch.Tensor]
    steps: int
    loss: float


def point_key(values: Any) -> dict[str, Any]:
    """The settings that determine the point (``values[name]`` for each of them)."""
    return {name: values[name] for name in _KEY_SETTINGS}


def cache_directory(configured: str | None) -> Path:
    """``configured``, else ``$XDG_CACHE_HOME/samhess``, else ``~/.cache/samhess``."""
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "samhess"


def _cache_path(directory: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    return directory / f"interpolating-{digest[:16]}.pt"


def _read_cache(path: Path, key: dict[str, Any]) -> InterpolatingPoint | None:
    if not path.exists():
        return None
    # The archive's CRCs first: a flipped bit would otherwise start every trajectory elsewhere.
    damage = runfiles.archive_damage(path)
    if damage is not None:
        raise RunFileError(f"cached point {path} is corrupt ({damage}); delete it to compute "
                           "it again")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise RunFileError(f"cached point {path} cannot be read ({type(exc).__name__}: "
                           f"{runfiles.first_sentence(exc)}); delete it to compute it again"
                           ) from None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT \
            or stored.get("key") != key:
        raise RunFileError(f"cached point {path} does not hold the point of these settings; "
                           "delete it to compute it again")
    return InterpolatingPoint(stored["state"], int(stored["steps"]), float(stored["loss"]))


def _write_cache(path: Path, key: dict[str, Any], point: InterpolatingPoint) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CACHE_FORMAT, "key": key, "state": point.state, "steps": point.steps,
                "loss": point.loss}, buffer)
    runfiles.write_bytes_atomic(path, buffer.getvalue())


def _descend(problem: Problem, lr: float, target: float, max_steps: int, *,
             quiet: bool) -> InterpolatingPoint:
    model = problem.new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    inputs, targets = problem.data
    # The number of steps is not known in advance: a counter with the loss, not a bar.
    bar = tqdm(desc="near-interpolating point", disable=not progress_enabled(quiet),
               file=sys.stderr, leave=False, dynamic_ncols=True, unit="step")
    try:
        for step in range(max_steps + 1):
            optimizer.zero_grad(set_to_none=True)
            loss = problem.loss_fn(model(inputs), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergenceError(f"the gradient descent to the near-interpolating point "
                                      f"diverged at step {step} (loss {value}); lower "
                                      "--interpolation-lr")
            if value <= target:
                state = {name: tensor.detach().clone() for name, tensor in
                         model.state_dict().items()}
                return InterpolatingPoint(state, step, value)
            if step == max_steps:
                break
            loss.backward()
            optimizer.step()
            bar.update(1)
            if step % 1000 == 0:
                bar.set_postfix(loss=f"{value:.2e}", refresh=False)
    finally:
        bar.close()
    raise UsageError(f"gradient descent did not reach --interpolation-loss {target:g} in "
                     f"--interpolation-max-steps {max_steps} (loss {value:.3g}); raise one of "
                     "them or --interpolation-lr")


def interpolating_point(problem: Problem, values: Any, *, quiet: bool = False
                        ) -> InterpolatingPoint:
    """The near-interpolating point of ``problem``, from the cache or by gradient descent.

    Args:
        problem: the problem (its examples, width and seed must be ``values``').
        values: the experiment's settings (``values[name]``), holding :data:`START_SETTINGS`
            and the problem's.
        quiet: no progress bar.

    Raises:
        DivergenceError: the descent diverged.
        UsageError: it did not reach the loss within the steps allowed.
        RunFileError: a cache file is damaged or holds another point.
    """
    key = point_key(values)
    path = _cache_path(cache_directory(values["cache_dir"]), key)
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    point = _descend(problem, key["interpolation_lr"], key["interpolation_loss"],
                     key["interpolation_max_steps"], quiet=quiet)
    _write_cache(path, key, point)
    return point
