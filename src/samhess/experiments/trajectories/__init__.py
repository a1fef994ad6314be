"""Trajectory-level claims of the sharpness literature as named, resumable experiments.

``samhess experiment NAME`` trains a few trajectories on one small over-parameterized problem
(:mod:`~samhess.experiments.trajectories.problem`), records the curvature along them, and
reports whether a paper's claim about where SAM (or IRE) takes the weights holds here, with the
numbers:

* ``sharpness-regularizers`` (Wen, Ma & Li, ICLR 2023): full-batch SAM lowers lambda_max,
  1-SAM lowers Tr H;
* ``bouncing`` (Bartlett, Long & Bousquet, JMLR 2023): full-batch SAM bounces across the top
  eigendirection;
* ``edge-of-stability`` (Cohen et al., ICLR 2021; Long & Bartlett, 2024): GD's lambda_max
  settles at 2/eta, SAM's at its own edge;
* ``m-sharpness`` (Foret et al., ICLR 2021): perturbations from smaller micro-batches end
  flatter at the same train loss;
* ``ire-manifold`` (Wang et al., NeurIPS 2024): SAM-IRE lowers Tr H (1 + kappa) times as fast
  as SAM.

Modules: :mod:`.experiment` (the declaration), :mod:`.registry`, :mod:`.shared_settings`,
:mod:`.problem`, :mod:`.interpolating` (the cached starting point), :mod:`.arms` (one
resumable trajectory), :mod:`.measures`, :mod:`.runner` (the directory, the trajectories, the
report), :mod:`.pages`, and one module per experiment.
This package's namespace holds the declarations only, which load without torch; the runner is
imported from :mod:`.runner`.
"""

from samhess.experiments.trajectories.experiment import (
    Experiment, ExperimentConfig, Findings, resolve_config,
)
from samhess.experiments.trajectories.registry import EXPERIMENTS, experiment_named

__all__ = ["EXPERIMENTS", "Experiment", "ExperimentConfig", "Findings", "experiment_named",
           "resolve_config"]
