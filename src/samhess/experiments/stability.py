r"""The edge of stability of an optimizer's step: the sharpness above which it cannot stay.

Gradient descent with learning rate :math:`\eta` on a quadratic of curvature :math:`\lambda`
multiplies the distance to the minimum along that direction by :math:`1 - \eta\lambda` each
step, so it is stable only for :math:`\eta\lambda < 2`. Trained networks drift until
:math:`\lambda_{\max}` hovers at :math:`2/\eta` (Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient
descent on neural networks typically occurs at the edge of stability", ICLR 2021).

SAM's step :math:`-\eta \nabla L(w + \rho g / \lVert g\rVert)` is, along an eigenvector of the
same quadratic, :math:`-\eta\lambda(1 + \rho\lambda/\lVert g\rVert)` times the component, so its
edge is (Long & Bartlett, "Sharpness-aware minimization and the edge of stability", JMLR 2024)

.. math::

    \eta\lambda\Bigl(1 + \frac{\rho\lambda}{\lVert g\rVert}\Bigr) < 2
    \iff
    \lambda < \lambda^* = \frac{4/\eta}{1 + \sqrt{1 + 8 r / \eta}}, \qquad r = \rho/\lVert g\rVert ,

the positive root of :math:`r\lambda^2 + \lambda - 2/\eta`, written so that :math:`r \to 0`
gives :math:`2/\eta`. Unnormalized SAM (USAM) has :math:`r = \rho` (Agarwala & Dauphin, "SAM
operates far from home: eigenvalue regularization as a dynamical phenomenon", ICML 2023).
SAM's edge moves with :math:`\lVert g\rVert`: it falls as the gradient shrinks.

With heavy-ball momentum :math:`\beta` gradient descent's edge is :math:`2(1 + \beta)/\eta`,
and L2 weight decay :math:`\mu` adds :math:`\mu` to every curvature of the objective, so the
data loss's :math:`\lambda` must stay below :math:`2(1 + \beta)/\eta - \mu`. For SAM with
momentum or weight decay no edge is stated here.
"""

from __future__ import annotations

import enum
import math

__all__ = ["StabilityEdge", "stability_threshold"]


class StabilityEdge(enum.Enum):
    """Which edge of stability an optimizer kind's step has."""

    #: :math:`\lambda < 2/\eta`.
    GRADIENT_DESCENT = "2 / lr"
    #: :math:`\eta\lambda(1 + \rho\lambda/\lVert g\rVert) < 2`.
    SAM = "lr lambda (1 + rho lambda / ||g||) < 2"
    #: :math:`\eta\lambda(1 + \rho\lambda) < 2`.
    USAM = "lr lambda (1 + rho lambda) < 2"


def stability_threshold(edge: StabilityEdge, lr: float, rho: float = 0.0,
                        grad_norm: float | None = None, momentum: float = 0.0,
                        weight_decay: float = 0.0) -> float | None:
    r"""The largest stable :math:`\lambda` of the data loss (the module docstring's
    :math:`\lambda^*`).

    Args:
        edge: the kind of step.
        lr: the learning rate :math:`\eta > 0`.
        rho: SAM's radius (ignored for gradient descent).
        grad_norm: :math:`\lVert g\rVert` (SAM only).
        momentum: heavy-ball momentum :math:`\beta`.
        weight_decay: L2 weight decay :math:`\mu`.

    Returns:
        :math:`\lambda^*`; ``None`` for SAM without a positive gradient norm, or with momentum
        or weight decay.

    Raises:
        ValueError: a learning rate that is not positive, or a negative radius, momentum or
            weight decay.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    for name, value in (("rho", rho), ("momentum", momentum), ("weight_decay", weight_decay)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if edge is StabilityEdge.GRADIENT_DESCENT:
        return 2.0 * (1.0 + momentum) / lr - weight_decay
    if momentum or weight_decay:
        return None
    if edge is StabilityEdge.USAM:
        ratio = rho
    else:
        if grad_norm is None or not grad_norm > 0:
            return None
        ratio = rho / grad_norm
    return 4.0 / lr / (1.0 + math.sqrt(1.0 + 8.0 * ratio / lr))
