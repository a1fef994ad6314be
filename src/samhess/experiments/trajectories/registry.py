"""The named experiments of ``samhess experiment NAME``, declared once each.

A declaration (:class:`~samhess.experiments.trajectories.experiment.Experiment`) names the
experiment, its paper and claim, its settings and the module that does the work; the flags, their
checks, ``--help`` and the docs table follow from it. Adding an experiment is one module
(``arms``, ``findings``) and one declaration here. An unknown name is an error, never another
experiment. Nothing here loads torch.
"""

from __future__ import annotations

from collections.abc import Mapping

from samhess.errors import UsageError
from samhess.experiments.settings import Setting, by_unique_name, markdown_row
from samhess.experiments.trajectories.experiment import Experiment
from samhess.experiments.trajectories.shared_settings import (
    AMPLIFICATION, BATCH_SIZE, CHECKPOINT_EVERY, EIGENVECTOR_EVERY, FLAT_SHARE, LEARNING_RATE,
    LEARNING_RATES, MASK_REFRESH_EVERY, MICRO_BATCH_SIZES, PROBLEM_SETTINGS, RADIUS, RECORD_EVERY,
    START_SETTINGS, STEPS, with_default,
)

__all__ = ["EXPERIMENTS", "experiment_named", "experiments_markdown"]

_PACKAGE = "samhess.experiments.trajectories."
#: SAM near the manifold: the learning rate and radius of the trajectories that start from the
#: near-interpolating point.
_NEAR_MANIFOLD = (*PROBLEM_SETTINGS, *START_SETTINGS, with_default(LEARNING_RATE, 0.02),
                  with_default(RADIUS, 0.1))

SHARPNESS_REGULARIZERS = Experiment(
    name="sharpness-regularizers",
    title="Which sharpness does SAM lower? Full batch against batch 1",
    reference="K. Wen, T. Ma, Z. Li. How Does Sharpness-Aware Minimization Minimize Sharpness? "
              "ICLR 2023",
    claim="near the manifold of minimizers, full-batch SAM minimizes lambda_max and 1-SAM "
          "(batch 1) minimizes Tr H.",
    settings=(*_NEAR_MANIFOLD, with_default(STEPS, 10_000), with_default(RECORD_EVERY, 500)),
    module=_PACKAGE + "sharpness_regularizers",
)

BOUNCING = Experiment(
    name="bouncing",
    title="Does full-batch SAM bounce across the top eigendirection?",
    reference="P. L. Bartlett, P. M. Long, O. Bousquet. The Dynamics of Sharpness-Aware "
              "Minimization: Bouncing Across Ravines and Drifting Towards Wide Minima. JMLR 2023",
    claim="full-batch SAM settles into a 2-cycle across the top eigenvector v_1: the sign of "
          "<g, v_1> alternates and ||g|| = eta rho lambda^2 / (2 - eta lambda).",
    settings=(*_NEAR_MANIFOLD, with_default(STEPS, 10_000), EIGENVECTOR_EVERY,
              CHECKPOINT_EVERY),
    module=_PACKAGE + "bouncing",
)

EDGE_OF_STABILITY = Experiment(
    name="edge-of-stability",
    title="Do GD and SAM train at their edges of stability?",
    reference="J. Cohen, S. Kaur, Y. Li, J. Z. Kolter, A. Talwalkar. Gradient Descent on Neural "
              "Networks Typically Occurs at the Edge of Stability. ICLR 2021; P. M. Long, "
              "P. L. Bartlett. Sharpness-Aware Minimization and the Edge of Stability. JMLR 2024",
    claim="from initialization, GD's lambda_max rises to 2/eta and hovers there; SAM's settles "
          "where eta lambda (1 + rho lambda / ||g||) = 2.",
    settings=(*PROBLEM_SETTINGS, with_default(STEPS, 4000), LEARNING_RATES,
              with_default(RADIUS, 0.05), with_default(RECORD_EVERY, 10)),
    module=_PACKAGE + "edge_of_stability",
)

M_SHARPNESS = Experiment(
    name="m-sharpness",
    title="Do perturbations from smaller micro-batches end flatter?",
    reference="P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-Aware Minimization for "
              "Efficiently Improving Generalization. ICLR 2021 (m-sharpness); M. Andriushchenko, "
              "N. Flammarion. Towards Understanding Sharpness-Aware Minimization. ICML 2022",
    claim="SAM whose perturbation comes from smaller micro-batches (m-SAM) ends flatter at the "
          "same train loss.",
    settings=(*PROBLEM_SETTINGS, with_default(STEPS, 2000), with_default(LEARNING_RATE, 0.2),
              with_default(RADIUS, 0.05), with_default(BATCH_SIZE, 128), MICRO_BATCH_SIZES,
              with_default(RECORD_EVERY, 200)),
    module=_PACKAGE + "m_sharpness",
)

IRE_MANIFOLD = Experiment(
    name="ire-manifold",
    title="Does IRE speed up SAM's descent of Tr H along the manifold?",
    reference="M. Wang, J. Wang, H. He, Z. Wang, G. Huang, F. Xiong, Z. Li, W. E, L. Wu. "
              "Improving Generalization and Convergence by Enhancing Implicit Regularization. "
              "NeurIPS 2024",
    claim="near the manifold of minimizers, SAM-IRE lowers Tr H about 1 + kappa times as fast "
          "as SAM.",
    settings=(*_NEAR_MANIFOLD, with_default(STEPS, 5000), BATCH_SIZE, AMPLIFICATION,
              FLAT_SHARE,
              with_default(MASK_REFRESH_EVERY, 10, help="steps between IRE mask refreshes "
                           "(sampled-label Fisher diagonal on all examples)"),
              with_default(RECORD_EVERY, 100)),
    module=_PACKAGE + "ire_manifold",
)


#: Every experiment by name, in the order of ``--help`` and the docs.
EXPERIMENTS: Mapping[str, Experiment] = by_unique_name(
    (SHARPNESS_REGULARIZERS, BOUNCING, EDGE_OF_STABILITY, M_SHARPNESS, IRE_MANIFOLD),
    "experiment")


def experiment_named(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        UsageError: no experiment has that name.
    """
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise UsageError(f"experiment {name!r} is not one of {', '.join(EXPERIMENTS)}") from None


def _settings_table(settings: tuple[Setting, ...]) -> list[str]:
    lines = ["| key (flag) | meaning | default |", "| --- | --- | --- |"]
    return lines + [markdown_row(f"`{s.name}` (`{s.flag}`)", s.help, s.default_text())
                    for s in settings]


def experiments_markdown() -> str:
    """The experiments' settings, as docs/cli.md shows them (generated from the declarations;
    ``python -m samhess.experiments.trajectories`` prints it): the shared ones once, then each
    experiment's own."""
    shared = {s.name for s in (*PROBLEM_SETTINGS, *START_SETTINGS)}
    lines = ["Every experiment: the problem.", "", *_settings_table(PROBLEM_SETTINGS), "",
             "The experiments that start from the near-interpolating point: its settings.", "",
             *_settings_table(START_SETTINGS)]
    for experiment in EXPERIMENTS.values():
        lines += ["", f"`samhess experiment {experiment.name}`: {experiment.claim}", "",
                  *_settings_table(tuple(s for s in experiment.settings
                                         if s.name not in shared))]
    return "\n".join(lines)
