"""The plain-data results of the analysis functions.

Every result is a dataclass of floats, ints, strings and lists of them; ``to_dict()`` returns
strict JSON (non-finite floats become ``None``), so a result can be written with
``json.dumps(result.to_dict(), allow_nan=False)`` and read back by any tool.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TaylorCheck",
    "TraceIdentityCheck",
    "DirectionalGains",
    "SharpFlatGains",
    "SecondOrderGains",
    "MaskQuality",
    "MinibatchDecomposition",
    "ValidityPoint",
    "ValiditySummary",
    "ValidityMap",
]


def json_ready(value: Any) -> Any:
    """``value`` as strict-JSON data: non-finite floats -> ``None``, tuples -> lists."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # tensors and numpy arrays/scalars
        return json_ready(value.tolist())
    raise TypeError(f"cannot represent a {type(value).__name__} in JSON: {value!r}")


class _PlainData:
    def to_dict(self) -> dict[str, Any]:
        """The fields as a strict-JSON dictionary (non-finite floats as ``None``)."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return json_ready({f.name: getattr(self, f.name) for f in fields})


@dataclass
class TaylorCheck(_PlainData):
    r"""A perturbed gradient and loss at :math:`w + e` against their Taylor predictions.

    Attributes:
        perturbation: what :math:`e` was: ``"SAM: rho g / ||g||"``, the optimizer whose
            ``first_step`` gave it (e.g. ``"ASAM(SGD)"``), or the callable's name.
        rhos: the radii, as given.
        grad_rel_error: :math:`\lVert \nabla L(w+e) - (g + He)\rVert / \lVert \nabla L(w+e) - g\rVert`
            per radius: the first-order remainder relative to the measured correction.
        loss_rel_error: :math:`|L(w+e) - (L + e^\top g + \tfrac12 e^\top H e)| /
            |L(w+e) - L - e^\top g|` per radius: the second-order remainder relative to the
            measured curvature contribution.
        order: least-squares slope of :math:`\log` ``grad_rel_error`` against :math:`\log\rho`
            (1 for a smooth loss; NaN when fewer than two errors are positive).
        loss_order: the same slope for ``loss_rel_error``.
        grad_norm: :math:`\lVert g\rVert`.
        loss: :math:`L(w)`.
        perturbation_norms: :math:`\lVert e\rVert` per radius.
        grad_correction_norms: :math:`\lVert \nabla L(w+e) - g\rVert` per radius (measured).
        predicted_correction_norms: :math:`\lVert He\rVert` per radius.
        grad_abs_error: :math:`\lVert \nabla L(w+e) - (g + He)\rVert` per radius.
        loss_at_perturbation: :math:`L(w+e)` per radius.
        quadratic_terms: :math:`\tfrac12 e^\top H e` per radius; for SAM it equals
            :math:`\tfrac12\rho^2 g^\top H g/\lVert g\rVert^2`, not :math:`\tfrac12\operatorname{Tr} H`.
        rayleigh_quotient: :math:`g^\top H g / \lVert g\rVert^2`.
    """

    perturbation: str
    rhos: list[float]
    grad_rel_error: list[float]
    loss_rel_error: list[float]
    order: float
    loss_order: float
    grad_norm: float
    loss: float
    perturbation_norms: list[float]
    grad_correction_norms: list[float]
    predicted_correction_norms: list[float]
    grad_abs_error: list[float]
    loss_at_perturbation: list[float]
    quadratic_terms: list[float]
    rayleigh_quotient: float


@dataclass
class TraceIdentityCheck(_PlainData):
    r"""Monte-Carlo check of :math:`\mathbb{E}\, e^\top H e = \sigma^2 \operatorname{Tr} H`.

    Attributes:
        sigma: standard deviation of each coordinate of the Gaussian :math:`e`.
        num_samples: number of Gaussian draws.
        monte_carlo_mean: sample mean of :math:`e^\top H e`.
        monte_carlo_stderr: its standard error (sample standard deviation over
            :math:`\sqrt{n}`).
        trace_estimate: the curvature engine's :math:`\operatorname{Tr} H` estimate.
        trace_stderr: its standard error (0 for an exact trace).
        trace_method: the engine's method.
        predicted_mean: :math:`\sigma^2` times ``trace_estimate``.
        z_score: ``(monte_carlo_mean - predicted_mean)`` over the combined standard error.
        dim: number of parameters :math:`d`.
        rayleigh_quotient: :math:`g^\top H g/\lVert g\rVert^2`, so that SAM's
            :math:`e^\top H e = \rho^2` times this.
        mean_eigenvalue: :math:`\operatorname{Tr} H / d`, what an isotropic :math:`e` of the same
            expected norm :math:`\rho` sees per :math:`\rho^2`.
    """

    sigma: float
    num_samples: int
    monte_carlo_mean: float
    monte_carlo_stderr: float
    trace_estimate: float
    trace_stderr: float
    trace_method: str
    predicted_mean: float
    z_score: float
    dim: int
    rayleigh_quotient: float
    mean_eigenvalue: float


@dataclass
class DirectionalGains(_PlainData):
    r"""One optimizer step measured along given directions, relative to a reference step.

    Attributes:
        optimizer: the optimizer's description (class names, e.g. ``"IRE(SAM(SGD))"``).
        reference: ``"gradient step"`` (:math:`-\eta g`), the reference optimizer's description,
            or ``"given step"``.
        gains: :math:`\langle v_i, D\rangle / \langle v_i, D_\text{ref}\rangle` per direction.
        components: :math:`\langle v_i, D\rangle`.
        reference_components: :math:`\langle v_i, D_\text{ref}\rangle`.
        predictions: the theory's gain per direction, or ``None`` where the theory gives none
            for this optimizer (see ``prediction_formula``).
        prediction_formula: the formula behind ``predictions`` (empty when there are none),
            for display.
        predictions_linear_in_eigenvalue: whether ``predictions`` are :math:`1 + c\lambda_i`, a
            function of the eigenvalue (SGD, SAM, USAM against the gradient step), rather than
            one value per direction (IRE's mask, ASAM's perturbation).
        eigenvalues: eigenvalues of the directions when given, else ``None``.
        lr: the learning rate of the first parameter group.
        grad_norm: :math:`\lVert g\rVert` on the batch at the current weights.
        step_norm: :math:`\lVert D\rVert`.
        reference_step_norm: :math:`\lVert D_\text{ref}\rVert`.
    """

    optimizer: str
    reference: str
    gains: list[float]
    components: list[float]
    reference_components: list[float]
    predictions: list[float] | None
    prediction_formula: str
    predictions_linear_in_eigenvalue: bool
    eigenvalues: list[float] | None
    lr: float
    grad_norm: float
    step_norm: float
    reference_step_norm: float


@dataclass
class SharpFlatGains(_PlainData):
    r"""An optimizer's gain on the sharp subspace against its gain on the flat one.

    A subspace gain is the least-squares factor between the projected steps,
    :math:`\langle P D, P D_\text{ref}\rangle / \lVert P D_\text{ref}\rVert^2`; on the span of
    eigenvectors :math:`v_i` it is the mean of the per-direction gains weighted by
    :math:`\langle v_i, D_\text{ref}\rangle^2`, so a direction the reference barely moves along
    cannot dominate it.

    Attributes:
        optimizer: the optimizer's description.
        reference: the reference step's description.
        k: number of sharp eigenvectors (largest eigenvalues).
        flat: ``"complement"`` (orthogonal complement of the sharp eigenvectors) or
            ``"smallest"`` (eigenvectors of the smallest :math:`|\lambda|`).
        sharp_gain: the subspace gain on the sharp eigenvectors; NaN when they hold less than
            ``min_share`` of :math:`\lVert D_\text{ref}\rVert^2`.
        flat_gain: the subspace gain on the flat subspace; NaN likewise.
        ratio: ``sharp_gain / flat_gain``; the seed note expects > 1 for SAM, < 1 for IRE. NaN
            when either gain is (see ``undefined_reason``).
        sharp_gains: the gain along each sharp eigenvector.
        sharp_gain_median: median of ``sharp_gains``.
        eigenvalues: the sharp eigenvalues, largest first.
        flat_eigenvalues: eigenvalues of the flat eigenvectors (``"smallest"`` only).
        predicted_sharp_gain: the theory's sharp gain (``None`` where it gives none).
        predicted_flat_gain: the theory's flat gain.
        predicted_ratio: their ratio.
        prediction_formula: the step model behind the predictions.
        sharp_share: share of :math:`\lVert D_\text{ref}\rVert^2` in the sharp subspace.
        flat_share: share of :math:`\lVert D_\text{ref}\rVert^2` in the flat subspace.
        min_share: the share below which a measured subspace gain is NaN.
        undefined_reason: why a measured gain is NaN (which subspace, its share); empty when
            both are defined.
        grad_norm: :math:`\lVert g\rVert`.
        lr: learning rate of the first parameter group.
    """

    optimizer: str
    reference: str
    k: int
    flat: str
    sharp_gain: float
    flat_gain: float
    ratio: float
    sharp_gains: list[float]
    sharp_gain_median: float
    eigenvalues: list[float]
    flat_eigenvalues: list[float] | None
    predicted_sharp_gain: float | None
    predicted_flat_gain: float | None
    predicted_ratio: float | None
    prediction_formula: str
    sharp_share: float
    flat_share: float
    min_share: float
    undefined_reason: str
    grad_norm: float
    lr: float


@dataclass
class SecondOrderGains(_PlainData):
    r"""SAM's measured gain per direction against its first- and second-order predictions.

    Attributes:
        mode: ``"sam"`` (:math:`c = \rho/\lVert g\rVert`) or ``"usam"`` (:math:`c = \rho`).
        rho: the radius.
        grad_norm: :math:`\lVert g\rVert`.
        eigenvalues: the directions' eigenvalues when given an eigenpair result, else ``None``.
        gradient_cosines: :math:`\langle v, g\rangle / (\lVert v\rVert \lVert g\rVert)`, the
            alignment that the second-order term is divided by.
        measured: the gain of one real step, :math:`\langle v, D\rangle/\langle v, -\eta g\rangle`.
        first_order: :math:`1 + c\,\langle v, Hg\rangle/\langle v, g\rangle`.
        second_order_terms: :math:`\tfrac12 c^2\langle v, \nabla^3 L[g, g]\rangle/\langle v, g\rangle`.
        second_order: ``first_order + second_order_terms``.
    """

    mode: str
    rho: float
    grad_norm: float
    eigenvalues: list[float] | None
    gradient_cosines: list[float]
    measured: list[float]
    first_order: list[float]
    second_order_terms: list[float]
    second_order: list[float]


@dataclass
class MaskQuality(_PlainData):
    r"""How a coordinate mask meets the Hessian's sharp and flat eigenvectors.

    With :math:`M = \operatorname{diag}(m)`, :math:`m \in \{0,1\}^d` the mask (1 = flat):

    Attributes:
        dim: number of coordinates :math:`d`.
        mask_fraction: :math:`\gamma = |m| / d`, what a random mask of the same size gives
            ``mean_sharp_mass_on_mask`` and ``mean_flat_mass_on_mask`` in expectation.
        sharp_mass_on_mask: :math:`\lVert M v_i\rVert^2` for each sharp eigenvector
            :math:`v_i`: the share of its squared mass the mask calls flat (ideal 0).
        mean_sharp_mass_on_mask: mean of ``sharp_mass_on_mask``.
        sharp_separation: ``mean_sharp_mass_on_mask / mask_fraction`` (1 = no better than a
            random mask, 0 = perfect).
        flat_mass_on_mask: :math:`\lVert M u_j\rVert^2` for each given flat eigenvector
            :math:`u_j` (``None`` when none were given).
        mean_flat_mass_on_mask: mean of ``flat_mass_on_mask``, :math:`\operatorname{Tr}(M P_F)
            / \dim F` for orthonormal :math:`u_j`: ideal 1 (reachable for
            :math:`\dim F \le |m|`), random :math:`\gamma`.
        inert_fraction: share of all coordinates whose gradient and curvature diagonal are
            exactly zero (``None`` unless both were given): what a random mask spends on them.
        mask_inert_share: share of the mask's coordinates that are inert: amplified without
            any effect on the step.
    """

    dim: int
    mask_fraction: float
    sharp_mass_on_mask: list[float]
    mean_sharp_mass_on_mask: float
    sharp_separation: float
    flat_mass_on_mask: list[float] | None
    mean_flat_mass_on_mask: float | None
    inert_fraction: float | None
    mask_inert_share: float | None


@dataclass
class MinibatchDecomposition(_PlainData):
    r"""SAM's extra term on a mini-batch, split into full-data, Hessian-noise and gradient-noise parts.

    With :math:`g_B = g_D + \xi` and :math:`c = \rho/\lVert g_B\rVert` (SAM) or :math:`\rho`
    (USAM), the extra term is
    :math:`c H_B g_B = c H_D g_D + c (H_B - H_D) g_D + c H_B \xi`.

    Attributes:
        rho: the radius.
        mode: ``"sam"`` or ``"usam"``.
        batch_size: examples in the mini-batch.
        grad_norm_batch: :math:`\lVert g_B\rVert`.
        grad_norm_full: :math:`\lVert g_D\rVert`.
        noise_norm: :math:`\lVert \xi\rVert`.
        extra_term_norm: :math:`\lVert c H_B g_B\rVert`.
        signal_term_norm: :math:`\lVert c H_B g_D\rVert`.
        noise_term_norm: :math:`\lVert c H_B \xi\rVert`.
        noise_share: ``noise_term_norm / extra_term_norm``.
        signal_share: ``signal_term_norm / extra_term_norm``.
        signal_noise_cosine: cosine between :math:`H_B g_D` and :math:`H_B \xi`.
        full_term_norm: :math:`\lVert c H_D g_D\rVert` (the full-batch SAM term with the
            mini-batch's :math:`c`).
        hessian_noise_term_norm: :math:`\lVert c (H_B - H_D) g_D\rVert`.
        extra_to_gradient: ``extra_term_norm / grad_norm_batch``.
        k: eigenvectors compared.
        eigenvalues_batch: top-:math:`k` eigenvalues of :math:`H_B`.
        eigenvalues_full: top-:math:`k` eigenvalues of :math:`H_D`.
        subspace_overlap: :math:`\lVert V_B^\top V_D\rVert_F^2 / k` (1 = same subspace).
        principal_angles_deg: principal angles between the two subspaces, in degrees, smallest
            first.
    """

    rho: float
    mode: str
    batch_size: int
    grad_norm_batch: float
    grad_norm_full: float
    noise_norm: float
    extra_term_norm: float
    signal_term_norm: float
    noise_term_norm: float
    noise_share: float
    signal_share: float
    signal_noise_cosine: float
    full_term_norm: float
    hessian_noise_term_norm: float
    extra_to_gradient: float
    k: int
    eigenvalues_batch: list[float]
    eigenvalues_full: list[float]
    subspace_overlap: float
    principal_angles_deg: list[float]


@dataclass
class ValidityPoint(_PlainData):
    r"""One sharp eigenvector at one batch size and radius.

    Attributes:
        batch_size: examples in the batch (the full data set for the full batch).
        rho: the radius.
        index: eigenvector index (0 = largest eigenvalue).
        eigenvalue: :math:`\lambda_i` of the batch Hessian.
        x: :math:`\rho\lambda_i/\lVert g_B\rVert` (SAM) or :math:`\rho\lambda_i` (USAM).
        measured_gain: the gain of one real SAM step along :math:`v_i`.
        predicted_gain: :math:`1 + x`.
        gain_error: :math:`|\text{measured} - \text{predicted}| / |\text{predicted}|`.
        correction_error: :math:`|\text{measured} - \text{predicted}| / |\text{predicted} - 1|`,
            the error relative to the predicted acceleration.
        reference_share: :math:`|\langle v_i, g\rangle| / \lVert g\rVert`; a gain along a
            direction the gradient barely touches is a ratio of two tiny numbers.
    """

    batch_size: int
    rho: float
    index: int
    eigenvalue: float
    x: float
    measured_gain: float
    predicted_gain: float
    gain_error: float
    correction_error: float
    reference_share: float


@dataclass
class ValiditySummary(_PlainData):
    r"""All sharp eigenvectors at one batch size and radius.

    Attributes:
        batch_size: examples in the batch.
        rho: the radius.
        grad_norm: :math:`\lVert g_B\rVert`.
        lambda_max: the largest eigenvalue of :math:`H_B`.
        x_max: :math:`\rho\lambda_\max/\lVert g_B\rVert` (SAM) or :math:`\rho\lambda_\max`.
        median_gain_error: median of the points' ``gain_error``.
        max_gain_error: the largest ``gain_error``.
        subspace_gain_error: the same error for the sharp subspace gain (the
            :math:`\langle v_i, D_\text{ref}\rangle^2`-weighted mean, robust to tiny components).
        min_measured_gain: the smallest measured gain (negative: the step crosses the valley).
        sharp_gain: measured subspace gain on the sharp eigenvectors.
        flat_gain: measured subspace gain on their orthogonal complement.
        ratio: ``sharp_gain / flat_gain``.
        predicted_sharp_gain: the first-order prediction of ``sharp_gain``.
        predicted_flat_gain: the first-order prediction of ``flat_gain``.
        sharp_share: :math:`\lVert V^\top g\rVert^2/\lVert g\rVert^2`, the share of the
            gradient in the top-:math:`k` eigenspace (its alignment with the sharp directions).
    """

    batch_size: int
    rho: float
    grad_norm: float
    lambda_max: float
    x_max: float
    median_gain_error: float
    max_gain_error: float
    subspace_gain_error: float
    min_measured_gain: float
    sharp_gain: float
    flat_gain: float
    ratio: float
    predicted_sharp_gain: float
    predicted_flat_gain: float
    sharp_share: float


@dataclass
class ValidityMap(_PlainData):
    r"""Where the first-order picture of SAM's step holds: gain error against batch size and radius.

    Attributes:
        mode: ``"sam"`` or ``"usam"``.
        k: sharp eigenvectors per batch.
        num_examples: examples in the full data set.
        rhos: the radii.
        batch_sizes: the batch sizes (the full data set appears as ``num_examples``).
        points: one :class:`ValidityPoint` per batch size, radius and eigenvector.
        summaries: one :class:`ValiditySummary` per batch size and radius.
    """

    mode: str
    k: int
    num_examples: int
    rhos: list[float]
    batch_sizes: list[int]
    points: list[ValidityPoint] = field(default_factory=list)
    summaries: list[ValiditySummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The map as a strict-JSON dictionary, points and summaries as lists of dicts."""
        return {
            "mode": self.mode,
            "k": self.k,
            "num_examples": self.num_examples,
            "rhos": json_ready(self.rhos),
            "batch_sizes": json_ready(self.batch_sizes),
            "points": [p.to_dict() for p in self.points],
            "summaries": [s.to_dict() for s in self.summaries],
        }
