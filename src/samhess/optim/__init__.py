"""Sharpness-aware optimizers: SAM, USAM, ASAM and IRE over any torch optimizer.

* :class:`SAM` (with :class:`USAM`, :class:`ASAM`): the two-pass sharpness-aware step over any
  base optimizer class, with GradScaler, gradient accumulation and checkpointing support.
* :func:`disable_running_stats`: keeps BatchNorm statistics out of SAM's second pass.
* :class:`IRE`: Implicit Regularization Enhancement over an optimizer instance (SGD, AdamW or a
  SAM, the latter giving SAM-IRE), fed by a diagonal curvature estimate.
* :func:`flattest_coordinates_mask`: the ranking IRE uses to pick flat coordinates.

See ``docs/optim.md`` for training-loop recipes.
"""

from samhess.optim.batchnorm import disable_running_stats
from samhess.optim.ire import IRE
from samhess.optim.masks import flattest_coordinates_mask
from samhess.optim.sam import ASAM, SAM, USAM

__all__ = ["SAM", "USAM", "ASAM", "IRE", "disable_running_stats", "flattest_coordinates_mask"]
