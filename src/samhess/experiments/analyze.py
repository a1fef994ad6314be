"""The seed analysis of a run's final model: ``samhess analyze RUN_DIR``.

On the run's fixed tracking batch, with the model and the optimizer (its state and, for IRE, its
mask) of the last checkpoint:

* ``gains``: the optimizer's step along the top Hessian eigenvectors (at least 8), against a
  plain gradient step, with the theory's prediction for each (SAM: 1 + rho lambda / ||g||;
  USAM: 1 + rho lambda; IRE: from its mask) -- :func:`samhess.analysis.directional_gains`;
* ``sharp_flat``: the sharp and flat gains and their ratio --
  :func:`samhess.analysis.sharp_flat_gains`;
* ``taylor``: SAM's gradient at w + e against its first-order prediction g + H e, for each
  radius of ``taylor_rhos``, and the fitted order, in float64 --
  :func:`samhess.analysis.taylor_check`;
* ``ire_mask_quality`` (IRE kinds): how much of the sharp eigenvectors' mass falls on the
  coordinates the mask calls flat -- :func:`samhess.analysis.ire_mask_quality`;
* ``spectral_density``: stochastic Lanczos quadrature -- :func:`samhess.curvature.spectral_density`;
* ``landscape`` (unless ``landscape_points`` is 0): the loss along the top eigenvector, along a
  filter-normalized random direction, and over the plane of two such directions, on the
  tracking batch -- :func:`samhess.analysis.landscape.loss_landscape`.

A run writes ``RUN_DIR/analysis/analysis.json`` at its end (its report plots it);
``samhess analyze`` recomputes it from the checkpoint and adds a PNG per result beside it. The
analysis is deterministic (fixed seeds), so both write the same analysis.json.

Each part is computed on its own: a part that fails (a zero gradient on a task fitted
exactly, a Lanczos run that does not converge) is recorded as ``{"error": "..."}`` under its
key, the report says so, and the run completes with the other parts. ``complete`` says
whether the analysed model is the run's last (``step`` equal to the configured ``steps``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samhess.errors import RunDirectoryError
from samhess.experiments import runfiles
from samhess.experiments.checkpoint import load_trained_task
from samhess.experiments.lock import run_directory_lock
from samhess.experiments.ownership import OwnedFiles
from samhess.experiments.tracking import measured_parameters, preserved_training_state

ANALYSIS_DIR = "analysis"
ANALYSIS_JSON = "analysis.json"
#: Top Hessian eigenvectors along which the final step's gain is measured (at least top_k).
GAIN_DIRECTIONS = 8
#: Points of the spectral density's grid.
DENSITY_GRID = 400


def _to_dict(result: Any) -> dict[str, Any]:
    return runfiles.json_safe(result.to_dict() if hasattr(result, "to_dict") else dict(result))


#: The parts of the final analysis, in the order they are computed (progress phases).
ANALYSIS_PHASES = ("eigenvectors", "gains", "Taylor check", "spectral density", "landscape")


def final_analysis(task: Any, *, step: int,
                   phase: Callable[[str], None] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The seed analysis of ``task``'s model and optimizer as they are now.

    Leaves the model, the optimizer and every RNG as it found them. A part that raises is
    recorded as ``{"error": "<type>: <message>"}`` and the others still run (the parts that need
    the top eigenvectors are recorded as failed with them).

    Args:
        task: the run's task, with the final model and optimizer.
        step: the step the model was trained to.
        phase: called with each name of :data:`ANALYSIS_PHASES` as that part starts (progress).

    Returns:
        The analysis as JSON data, and the result objects of the parts that succeeded (for the
        plot helpers).
    """
    from samhess.analysis import directional_gains, sharp_flat_gains
    from samhess.analysis.landscape import loss_landscape
    from samhess.curvature import HessianOperator, eigenpairs, spectral_density

    announce = phase or (lambda name: None)
    config = task.config
    setup = task.tracking
    model, optimizer, loss_fn, batch = task.model, task.optimizer, task.loss_fn, setup.batch
    params = measured_parameters(model, optimizer)
    result: dict[str, Any] = {"step": step, "steps": config.steps,
                              "complete": step == config.steps, "optimizer": config.optimizer,
                              "batch_size": int(batch[0].shape[0])}
    objects: dict[str, Any] = {}
    with preserved_training_state(model):
        announce("eigenvectors")
        operator = HessianOperator(model, loss_fn, batch, params=params)
        dim = operator.dim
        top = _part(result, "top_eigenpairs", lambda: eigenpairs(
            operator, min(max(GAIN_DIRECTIONS, config.top_k), dim - 1), which="largest",
            seed=setup.seed), record=False)

        def gains() -> dict[str, Any]:
            announce("gains")
            objects["gains"] = directional_gains(model, loss_fn, batch, optimizer, _needed(top),
                                                 params=params)
            found = _to_dict(objects["gains"])
            return {key: found[key] for key in (
                "eigenvalues", "gains", "predictions", "prediction_formula",
                "predictions_linear_in_eigenvalue", "components",
                "reference_components", "grad_norm", "lr")}

        def sharp_flat() -> dict[str, Any]:
            objects["sharp_flat"] = sharp_flat_gains(model, loss_fn, batch, optimizer,
                                                     k=config.top_k, sharp=_needed(top),
                                                     params=params, seed=setup.seed)
            return _to_dict(objects["sharp_flat"])

        def taylor() -> dict[str, Any]:
            announce("Taylor check")
            objects["taylor"] = _taylor_in_float64(task)
            return _to_dict(objects["taylor"])

        def density() -> dict[str, Any]:
            announce("spectral density")
            objects["spectral_density"] = spectral_density(
                operator, num_probes=config.density_probes,
                lanczos_steps=min(config.density_lanczos_steps, dim), grid=DENSITY_GRID,
                seed=setup.seed)
            found = _to_dict(objects["spectral_density"])
            return {"grid": found["grid"], "density": found["density"], "sigma": found["sigma"]}

        def landscape() -> dict[str, Any]:
            found = _needed(top)
            objects["landscape"] = loss_landscape(
                model, loss_fn, batch, params=params, top_eigenvector=found.eigenvectors[:, 0],
                top_eigenvalue=float(found.eigenvalues[0]), points=config.landscape_points,
                radius=config.landscape_radius, seed=setup.seed)
            return _to_dict(objects["landscape"])

        _part(result, "gains", gains)
        _part(result, "sharp_flat", sharp_flat)
        _part(result, "taylor", taylor)
        _part(result, "ire_mask_quality", lambda: _mask_quality(task, _needed(top), params))
        _part(result, "spectral_density", density)
        result["hessian_matvecs"] = int(operator.num_matvecs)
        result["landscape"] = None
        if config.landscape_points:
            announce("landscape")
            _part(result, "landscape", landscape)
    return result, objects


class _Missing(Exception):
    """A part's input (the top eigenpairs) failed; that part is recorded as failed with it."""


def _needed(value: Any) -> Any:
    if isinstance(value, _Failure):
        raise _Missing(value.message)
    return value


class _Failure:
    def __init__(self, message: str):
        self.message = message


def _part(result: dict[str, Any], key: str, compute, *, record: bool = True) -> Any:
    """``compute()`` stored under ``key``; an exception stored as that part's error instead.

    Any exception: the analysis of a finished run must not throw the run away, and the error
    is kept in analysis.json and shown in the report, not hidden.
    """
    try:
        value = compute()
    except _Missing as missing:
        value = _Failure(f"the top eigenpairs failed ({missing})")
    except Exception as exc:  # noqa: BLE001 - recorded, see the docstring
        value = _Failure(f"{type(exc).__name__}: {runfiles.first_sentence(exc, 240)}")
    if record:
        result[key] = {"error": value.message} if isinstance(value, _Failure) else value
    return value


def failed_parts(analysis: dict[str, Any]) -> dict[str, str]:
    """The parts of an analysis that failed, with their errors."""
    return {key: value["error"] for key, value in analysis.items()
            if isinstance(value, dict) and isinstance(value.get("error"), str)}


def _taylor_in_float64(task: Any) -> Any:
    """The Taylor check of the run's own perturbation on a float64 copy of the model and batch.

    A sharpness-aware kind is checked with its own perturbation (its optimizer rebuilt over the
    copy, with the run's state, so that e.g. ASAM's rho |w|^2 g / || |w| g || is the one
    expanded); the other kinds with SAM's rho g / ||g||. In float32 the gradient difference at
    the smallest radii is rounding noise, which would flatten the fitted order to 0 whatever the
    expansion does.
    """
    from samhess.analysis import taylor_check
    from samhess.analysis.taylor import perturbing_optimizer
    from samhess.experiments.optimizer_kinds import build_optimizer

    config = task.config
    model = copy.deepcopy(task.model).to(torch.float64)
    inputs, targets = task.tracking.batch
    batch = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in (inputs, targets))
    perturbation = None
    if perturbing_optimizer(task.optimizer) is not None:
        perturbation = build_optimizer(config.optimizer, model,
                                       {**config.to_dict(), "num_data": task.data.num_train})
        perturbation.load_state_dict(copy.deepcopy(task.optimizer.state_dict()))
    return taylor_check(model, task.loss_fn, batch, list(config.taylor_rhos), perturbation)


def _mask_quality(task: Any, top: Any, params: list) -> dict[str, Any] | None:
    from samhess.optim import IRE

    optimizer = task.optimizer
    if not isinstance(optimizer, IRE) or optimizer.mask is None:
        return None
    from samhess.analysis import ire_mask_quality

    return _to_dict(ire_mask_quality(optimizer, top, params=params))


def _png_of(plot, result: Any, path: Path) -> bytes:
    """The PNG a path-taking plot helper draws, drawn into a temporary file beside ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    try:
        plot(result, temporary)
        return temporary.read_bytes()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_analysis(run_dir: Path, analysis: dict[str, Any], objects: dict[str, Any], *,
                   plots: bool = True) -> list[Path]:
    """Write analysis.json (and with ``plots`` its PNGs) into ``run_dir/analysis``.

    Returns:
        The PNG paths.
    """
    from samhess.analysis import plot_gains, plot_landscape, plot_taylor
    from samhess.curvature import plot_spectral_density

    owned = OwnedFiles(run_dir)
    owned.write_json(f"{ANALYSIS_DIR}/{ANALYSIS_JSON}", analysis)
    if not plots or not runfiles.is_main_process():
        return []
    figures = (("gains.png", plot_gains, "gains"), ("sharp_flat.png", plot_gains, "sharp_flat"),
               ("taylor.png", plot_taylor, "taylor"),
               ("spectral_density.png", plot_spectral_density, "spectral_density"),
               ("landscape.png", plot_landscape, "landscape"))
    written = []
    for filename, plot, key in figures:
        if key in objects:
            owned.write_bytes(f"{ANALYSIS_DIR}/{filename}",
                              _png_of(plot, objects[key], run_dir / ANALYSIS_DIR / filename))
            written.append(run_dir / ANALYSIS_DIR / filename)
    return written


def analyze_final_model(run_dir: Path, task: Any, *, step: int,
                        phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Analyse a run's final model (called at the end of a run) and write analysis.json.

    The run's report draws these numbers; ``samhess analyze`` adds the per-result PNGs.
    ``phase`` is called as each part of the analysis starts (:func:`final_analysis`).
    """
    analysis, objects = final_analysis(task, step=step, phase=phase)
    write_analysis(run_dir, analysis, objects, plots=False)
    return analysis


@dataclass
class AnalysisResult:
    """What ``samhess analyze`` wrote."""

    run_dir: Path
    analysis: dict[str, Any]
    files: list[Path]

    @property
    def complete(self) -> bool:
        """Whether the analysed model is the run's last."""
        return bool(self.analysis.get("complete", True))

    def screen_summary(self) -> str:
        sharp_flat = self.analysis.get("sharp_flat") or {}
        taylor = self.analysis.get("taylor") or {}
        lines = []
        if not self.analysis.get("complete", True):
            lines.append(f"INCOMPLETE: {self.run_dir} stopped at step {self.analysis['step']} "
                         f"of {self.analysis['steps']}; this is the model at that step "
                         "(continue the run with samhess run --resume)")
        lines.append(f"Final model of {self.run_dir} (step {self.analysis['step']}, "
                     f"{self.analysis['optimizer']}):")
        ratio = sharp_flat.get("ratio")
        if ratio is not None:
            lines.append(f"  sharp/flat gain ratio {ratio:.3f} (sharp "
                         f"{sharp_flat['sharp_gain']:.3f}, flat {sharp_flat['flat_gain']:.3f})")
        if taylor.get("order") is not None:
            lines.append(f"  Taylor check: order {taylor['order']:.2f} over rho in "
                         f"[{min(taylor['rhos']):g}, {max(taylor['rhos']):g}]")
        lines += [f"  {key} failed: {error}" for key, error in failed_parts(self.analysis).items()]
        lines.append(f"Analysis: {self.run_dir / ANALYSIS_DIR / ANALYSIS_JSON}")
        return "\n".join(lines)


def analyze_run(run_dir: Path, *, quiet: bool = False) -> AnalysisResult:
    """``samhess analyze RUN_DIR``: rebuild the final model from the checkpoint and analyse it.

    A run that stopped before its last step is analysed at the step its checkpoint holds, and
    the result says so (``complete`` false, and a first line on screen).

    Raises:
        RunDirectoryError: ``run_dir`` holds no run of samhess's, or another process writes it.
    """
    del quiet  # the analysis takes seconds; there is no bar to show
    if not run_dir.is_dir() or not (run_dir / runfiles.CONFIG_FILE).exists():
        raise RunDirectoryError(f"{run_dir} holds no run (config.json is missing)")
    with run_directory_lock(run_dir, "samhess analyze"):
        task, step = load_trained_task(run_dir)
        analysis, objects = final_analysis(task, step=step)
        files = write_analysis(run_dir, analysis, objects)
    return AnalysisResult(run_dir=run_dir, analysis=analysis,
                          files=[run_dir / ANALYSIS_DIR / ANALYSIS_JSON, *files])
