"""Sharpness-aware optimizers: SAM, its variants, and IRE over any torch optimizer.

* :class:`SAM` (with :class:`USAM`, :class:`ASAM`): the two-pass sharpness-aware step over any
  base optimizer class, with GradScaler, gradient accumulation and checkpointing support, and
  protected hooks through which the variants are written.
* The variants: :class:`GSAM` (surrogate gap), :class:`WSAM` (weighted sharpness),
  :class:`FriendlySAM` (perturbation from the gradient noise), :class:`LookSAM` (SAM's
  gradient every k steps), :class:`MSAM` (one perturbation per micro-batch), :class:`RST`
  (randomized switching) and :class:`BSAM` (Bayesian SAM, its own update).
* :func:`disable_running_stats`: keeps BatchNorm statistics out of SAM's second pass.
* :class:`IRE`: Implicit Regularization Enhancement over an optimizer instance (SGD, AdamW or a
  SAM, the latter giving SAM-IRE), fed by a diagonal curvature estimate.
* :func:`flattest_coordinates_mask`: the ranking IRE uses to pick flat coordinates.

See ``docs/optim.md`` for training-loop recipes.
"""

from samhess.optim.batchnorm import disable_running_stats
from samhess.optim.bsam import BSAM
from samhess.optim.friendly_sam import FriendlySAM
from samhess.optim.gsam import GSAM
from samhess.optim.ire import IRE
from samhess.optim.looksam import LookSAM
from samhess.optim.masks import flattest_coordinates_mask
from samhess.optim.msam import MSAM
from samhess.optim.rst import RST
from samhess.optim.sam import ASAM, SAM, USAM
from samhess.optim.wsam import WSAM

__all__ = [
    "SAM",
    "USAM",
    "ASAM",
    "GSAM",
    "WSAM",
    "FriendlySAM",
    "LookSAM",
    "MSAM",
    "RST",
    "BSAM",
    "IRE",
    "disable_running_stats",
    "flattest_coordinates_mask",
]
