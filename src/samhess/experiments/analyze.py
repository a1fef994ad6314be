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
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samhess.experiments import runfiles
from samhess.experiments.checkpoint import load_trained_task
from samhess.experiments.tracking import preserved_training_state

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

    Leaves the model, the optimizer and every RNG as it found them.

    Args:
        task: the run's task, with the final model and optimizer.
        step: the step the model was trained to.
        phase: called with each name of :data:`ANALYSIS_PHASES` as that part starts (progress).

    Returns:
        The analysis as JSON data, and the result objects (for the plot helpers).
    """
    from samhess.analysis import directional_gains, sharp_flat_gains
    from samhess.analysis.landscape import loss_landscape
    from samhess.curvature import HessianOperator, eigenpairs, spectral_density

    announce = phase or (lambda name: None)
    config = task.config
    setup = task.tracking
    model, optimizer, loss_fn, batch = task.model, task.optimizer, task.loss_fn, setup.batch
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    result: dict[str, Any] = {"step": step, "optimizer": config.optimizer,
                              "batch_size": int(batch[0].shape[0])}
    objects: dict[str, Any] = {}
    with preserved_training_state(model):
        announce("eigenvectors")
        operator = HessianOperator(model, loss_fn, batch, params=params)
        dim = operator.dim
        top = eigenpairs(operator, min(max(GAIN_DIRECTIONS, config.top_k), dim - 1),
                         which="largest", seed=setup.seed)
        announce("gains")
        objects["gains"] = directional_gains(model, loss_fn, batch, optimizer, top,
                                             params=params)
        gains = _to_dict(objects["gains"])
        result["gains"] = {key: gains[key] for key in (
            "eigenvalues", "gains", "predictions", "prediction_formula",
            "predictions_linear_in_eigenvalue", "components",
            "reference_components", "grad_norm", "lr")}
        objects["sharp_flat"] = sharp_flat_gains(model, loss_fn, batch, optimizer,
                                                 k=config.top_k, sharp=top, params=params,
                                                 seed=setup.seed)
        result["sharp_flat"] = _to_dict(objects["sharp_flat"])
        announce("Taylor check")
        objects["taylor"] = _taylor_in_float64(task)
        result["taylor"] = _to_dict(objects["taylor"])
        result["ire_mask_quality"] = _mask_quality(task, top, params)
        announce("spectral density")
        objects["spectral_density"] = spectral_density(
            operator, num_probes=config.density_probes,
            lanczos_steps=min(config.density_lanczos_steps, dim), grid=DENSITY_GRID,
            seed=setup.seed)
        density = _to_dict(objects["spectral_density"])
        result["spectral_density"] = {"grid": density["grid"], "density": density["density"],
                                      "sigma": density["sigma"]}
        result["hessian_matvecs"] = int(operator.num_matvecs)
        result["landscape"] = None
        if config.landscape_points:
            announce("landscape")
            objects["landscape"] = loss_landscape(
                model, loss_fn, batch, params=params, top_eigenvector=top.eigenvectors[:, 0],
                top_eigenvalue=float(top.eigenvalues[0]), points=config.landscape_points,
                radius=config.landscape_radius, seed=setup.seed)
            result["landscape"] = _to_dict(objects["landscape"])
    return result, objects


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


def _plot_atomically(plot, result: Any, path: Path) -> Path:
    """Draw with a plot helper into a temporary name, then rename: a kill leaves no half PNG."""
    temporary = path.with_name(f".{path.name}.tmp.png")
    plot(result, temporary)
    os.replace(temporary, path)
    return path


def write_analysis(run_dir: Path, analysis: dict[str, Any], objects: dict[str, Any], *,
                   plots: bool = True) -> list[Path]:
    """Write analysis.json (and with ``plots`` its PNGs) into ``run_dir/analysis``.

    Returns:
        The PNG paths.
    """
    from samhess.analysis import plot_gains, plot_landscape, plot_taylor
    from samhess.curvature import plot_spectral_density

    directory = run_dir / ANALYSIS_DIR
    runfiles.write_json_atomic(directory / ANALYSIS_JSON, analysis)
    if not plots or not runfiles.is_main_process():
        return []
    files = [
        _plot_atomically(plot_gains, objects["gains"], directory / "gains.png"),
        _plot_atomically(plot_gains, objects["sharp_flat"], directory / "sharp_flat.png"),
        _plot_atomically(plot_taylor, objects["taylor"], directory / "taylor.png"),
        _plot_atomically(plot_spectral_density, objects["spectral_density"],
                         directory / "spectral_density.png"),
    ]
    if "landscape" in objects:
        files.append(_plot_atomically(plot_landscape, objects["landscape"],
                                      directory / "landscape.png"))
    return files


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

    def screen_summary(self) -> str:
        sharp_flat = self.analysis.get("sharp_flat") or {}
        taylor = self.analysis.get("taylor") or {}
        lines = [f"Final model of {self.run_dir} (step {self.analysis['step']}, "
                 f"{self.analysis['optimizer']}):"]
        ratio = sharp_flat.get("ratio")
        if ratio is not None:
            lines.append(f"  sharp/flat gain ratio {ratio:.3f} (sharp "
                         f"{sharp_flat['sharp_gain']:.3f}, flat {sharp_flat['flat_gain']:.3f})")
        if taylor.get("order") is not None:
            lines.append(f"  Taylor check: order {taylor['order']:.2f} over rho in "
                         f"[{min(taylor['rhos']):g}, {max(taylor['rhos']):g}]")
        lines.append(f"Analysis: {self.run_dir / ANALYSIS_DIR / ANALYSIS_JSON}")
        return "\n".join(lines)


def analyze_run(run_dir: Path, *, quiet: bool = False) -> AnalysisResult:
    """``samhess analyze RUN_DIR``: rebuild the final model from the checkpoint and analyse it."""
    del quiet  # the analysis takes seconds; there is no bar to show
    if not (run_dir / runfiles.CONFIG_FILE).exists():
        raise ValueError(f"{run_dir} holds no run (config.json is missing)")
    task, step = load_trained_task(run_dir)
    analysis, objects = final_analysis(task, step=step)
    files = write_analysis(run_dir, analysis, objects)
    return AnalysisResult(run_dir=run_dir, analysis=analysis,
                          files=[run_dir / ANALYSIS_DIR / ANALYSIS_JSON, *files])
