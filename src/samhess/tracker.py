"""Curvature tracking in your own training loop, written as ``samhess run`` writes it.

:class:`Tracker` measures, every ``every`` steps of a loop it does not own, what ``samhess run``
records (:func:`samhess.experiments.tracking.measure_curvature`): the top Hessian eigenvalues,
the Hutch++ trace with its standard error, the gradient norm and, given the optimizer, the
sharp/flat gains of that optimizer's step. It writes the run files of
:mod:`samhess.experiments.runfiles` (``config.json``, ``metrics.jsonl``, ``timing.json``), so
that ``samhess report OUT`` draws the same plots and tables as for a ``samhess run``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samhess._validation import check_bool, check_int_at_least
from samhess.curvature.batches import check_batch, count_examples, describe
from samhess.curvature.operators import resolve_parameters
from samhess.errors import RunDirectoryError
from samhess.experiments.lock import hold_directory, let_go
from samhess.experiments.metrics_log import MetricsLog
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.provenance import PROVENANCE_KEY, environment
from samhess.experiments.rundir import RUN_KIND, decide
from samhess.experiments.runfiles import CONFIG_FILE, METRICS_FILE, RUN_FILES, TIMING_FILE
from samhess.experiments.tracking import (
    RECORD_KEYS,
    TrackingSetup,
    measure_curvature,
    preserved_training_state,
)

__all__ = ["Tracker"]

#: Seeds the Lanczos start vector and the trace probes of every record, as ``samhess run`` does
#: with its run seed.
TRACKING_SEED = 0


class Tracker:
    """Records curvature, and an optimizer's sharp/flat gains, from inside your training loop.

    At every step ``step`` with ``step % every == 0``, :meth:`record` measures on the fixed
    ``tracking_data`` batch, in eval mode:

    * ``eigenvalues``: the ``top_k`` largest eigenvalues of the Hessian of the mean loss
      (:func:`samhess.curvature.eigenpairs`), ``lambda_max`` first;
    * ``hessian_trace`` and ``hessian_trace_stderr``: Hutch++ with ``trace_matvecs`` products
      (Meyer et al., SOSA 2021);
    * ``grad_norm``: :math:`\\lVert g\\rVert`;
    * given ``optimizer``: ``sharp_gain``, ``flat_gain``, ``gain_ratio``, the optimizer's real
      step (taken and undone) on the span of the top eigenvectors and on its complement,
      against a gradient step (:func:`samhess.analysis.sharp_flat_gains`), and for IRE the
      same against its base optimizer's step (``*_vs_base``).

    Each record is one line of ``OUT/metrics.jsonl`` (the keys of ``samhess run``; the values
    this loop cannot know, such as test accuracy, are ``null``), appended and forced to disk;
    ``config.json`` and ``timing.json`` are replaced atomically. ``samhess report OUT`` turns
    them into the report. From construction to :meth:`close` the tracker holds ``out``'s lock
    (one writer per run directory, :mod:`samhess.experiments.lock`), and it writes, replaces
    and removes only samhess's own files (:mod:`samhess.experiments.ownership`).

    A record leaves the model's parameters, buffers (BatchNorm statistics), gradients and
    train/eval mode, the optimizer's state and every random number generator (torch, CUDA,
    NumPy, Python) exactly as it found them, so a loop with a tracker takes the same steps as
    one without.

    Args:
        out: the run directory; it must not hold a run already unless ``overwrite``.
        model: the network being trained.
        loss_fn: ``loss_fn(outputs, targets)`` -> the batch-mean loss.
        tracking_data: one batch ``(inputs, targets)`` of any kind the curvature accepts
            (:mod:`samhess.curvature.batches`), measured at every record.
        every: steps between records.
        top_k: eigenvalues per record, and sharp directions of the gains.
        trace_matvecs: Hessian-vector products of each trace estimate.
        optimizer: the loop's optimizer (any torch optimizer, SAM, IRE), for the gains; the
            curvature is then over its parameters.
        overwrite: replace the run files samhess wrote in ``out`` (other files are left alone,
            and one of them under a run file's name is refused).

    Raises:
        TypeError: a model that is not a module, a loss that is not callable, or
            ``tracking_data`` that is not an ``(inputs, targets)`` batch.
        ValueError: a bad ``every``, ``top_k`` or ``trace_matvecs``, or ``out`` holding a run
            (:class:`~samhess.errors.RunDirectoryError`, also when another process writes it).

    Example:
        >>> with Tracker("runs/mine", model, loss_fn, (x[:256], y[:256]), every=50,
        ...              optimizer=optimizer) as tracker:
        ...     for step in range(1000):
        ...         loss = train_step()
        ...         tracker.record(step, train_loss=loss)
    """

    def __init__(
        self,
        out: str | Path,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        tracking_data: Any,
        *,
        every: int = 50,
        top_k: int = 3,
        trace_matvecs: int = 30,
        optimizer: Any = None,
        overwrite: bool = False,
    ) -> None:
        params = resolve_parameters(model, None)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {describe(loss_fn)}")
        check_batch(tracking_data, "tracking_data")
        if optimizer is not None and not hasattr(optimizer, "param_groups"):
            raise TypeError(f"optimizer must be a torch optimizer or None, got {describe(optimizer)}")
        self.every = check_int_at_least("every", every, 1)
        top_k = check_int_at_least("top_k", top_k, 1)
        trace_matvecs = check_int_at_least("trace_matvecs", trace_matvecs, 1)
        overwrite = check_bool("overwrite", overwrite)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out {str(self.out)!r} is a file, not a directory")
        owned = OwnedFiles(self.out)
        self._lock = hold_directory(self.out, "samhess.Tracker")
        try:
            if owned.exists() and not overwrite:
                raise RunDirectoryError(
                    f"{self.out} already holds a run; pass overwrite=True to replace its run "
                    "files or choose another directory"
                )
            decision = decide(self.out, RUN_KIND, RUN_FILES, resume=False, force=owned.exists())
        except BaseException:
            let_go(self._lock)
            raise
        self._owned = owned
        self.model = model
        self.optimizer = optimizer
        # measure_curvature reads the loss, the batch, top_k, trace_matvecs and the seed; the
        # evaluation sets belong to samhess run's own records and stay empty here.
        self.setup = TrackingSetup(
            loss_fn=loss_fn, kind="custom", batch=tracking_data, train_eval=None, test_eval=None,
            top_k=top_k, trace_matvecs=trace_matvecs, seed=TRACKING_SEED,
        )
        self._config = self._describe(params)
        self._log = MetricsLog(self.out / METRICS_FILE)
        self._first_step: int | None = None
        self._last_step: int | None = None
        self._tracking_seconds = 0.0
        self._started = time.perf_counter()
        self._closed = False
        if decision == "replace":
            owned.remove_owned()
        self.out.mkdir(parents=True, exist_ok=True)
        owned.set_kind(RUN_KIND)
        owned.write_json(CONFIG_FILE, self._config)
        self._log.reset()

    def _describe(self, params: list[torch.Tensor]) -> dict[str, Any]:
        """``config.json``: what this run is, with ``null`` for what the loop does not say."""
        from samhess.analysis._steps import describe_optimizer

        group = self.optimizer.param_groups[0] if self.optimizer is not None else {}
        try:
            examples = count_examples(self.setup.batch, "tracking_data")
        except ValueError:
            examples = None
        return {
            "source": "samhess.Tracker",
            "optimizer": "none" if self.optimizer is None else describe_optimizer(self.optimizer),
            "seed": None,
            "dataset": None,
            "model": type(self.model).__name__,
            "steps": 0,
            "batch_size": None,
            "lr": group.get("lr"),
            "momentum": group.get("momentum"),
            "weight_decay": group.get("weight_decay"),
            "track_every": self.every,
            "top_k": self.setup.top_k,
            "trace_matvecs": self.setup.trace_matvecs,
            "tracking_batch_size": examples,
            "dtype": str(params[0].dtype).removeprefix("torch."),
            "device": str(params[0].device),
            PROVENANCE_KEY: [{**environment(params[0].device), "from_step": 0}],
        }

    def record(self, step: int, train_loss: float | torch.Tensor | None = None) -> dict[str, Any] | None:
        """Measure and write a record if ``step % every == 0``; return it (``None`` otherwise).

        Args:
            step: the loop's step number (>= 0, increasing from one record to the next).
            train_loss: the loss to log beside the curvature (a number or a one-element
                tensor), or ``None``; read only at recorded steps.

        Raises:
            ValueError: after :meth:`close`, for a negative step, or a step not after the last
                recorded one.
        """
        if self._closed:
            raise ValueError(f"the tracker of {self.out} is closed; make a new one to record again")
        if isinstance(step, bool) or not isinstance(step, Integral):
            raise TypeError(f"step must be an integer, got {describe(step)}")
        step = check_int_at_least("step", step, 0)
        if step % self.every:
            return None
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step must come after the last recorded step {self._last_step}, got {step}")
        loss = _as_number(train_loss)
        started = time.perf_counter()
        with preserved_training_state(self.model):
            curvature = measure_curvature(self.model, self.optimizer, self.setup)
        values = {"step": step, "epoch": None, "batch_loss": None, "train_loss": loss,
                  "train_accuracy": None, "test_loss": None, "test_accuracy": None, **curvature,
                  "layer_curvature": None}
        entry = {key: values[key] for key in RECORD_KEYS}
        self._log.append(entry)
        self._tracking_seconds += time.perf_counter() - started
        if self._first_step is None:
            self._first_step = step
        self._last_step = step
        self._config["steps"] = step
        self._owned.write_json(CONFIG_FILE, self._config)
        self._write_timing()
        return entry

    def _write_timing(self) -> None:
        elapsed = time.perf_counter() - self._started - self._tracking_seconds
        steps = 0 if self._first_step is None else self._last_step - self._first_step
        self._owned.write_json(TIMING_FILE, {
            "steps": steps,
            "loop_seconds": elapsed,
            # Wall-clock time per step of the loop between the first and the last record,
            # tracking excluded: the loop's own work, whatever it does besides training.
            "seconds_per_step": elapsed / steps if steps else None,
            "tracking_seconds": self._tracking_seconds,
        })

    def close(self) -> None:
        """Write the final timing and release ``out``; later :meth:`record` calls raise. Closing
        twice is harmless."""
        if not self._closed:
            try:
                self._write_timing()
            finally:
                self._closed = True
                let_go(self._lock)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tracker({str(self.out)!r}, every={self.every}, records up to step {self._last_step})"


def _as_number(value: Any) -> float | None:
    """``train_loss`` as a float (``None`` stays ``None``; a non-finite loss is logged as null)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"train_loss must be one number, got {describe(value)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"train_loss must be a number, a one-element tensor or None, got {describe(value)}")
    value = float(value)
    return value if math.isfinite(value) else None
