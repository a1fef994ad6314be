"""The seed note's claims about SAM and IRE, turned into measurements.

* :func:`taylor_check`, :func:`trace_identity_check`: how far SAM's expansions
  :math:`\\nabla L(w + e) \\approx g + He` and :math:`L(w + e) \\approx L + e^\\top g +
  \\tfrac12 e^\\top H e` hold, and the Monte-Carlo identity
  :math:`\\mathbb{E}\\, e^\\top H e = \\sigma^2 \\operatorname{Tr} H`;
* :func:`directional_gains`, :func:`sharp_flat_gains`: one real step of any torch optimizer along
  Hessian eigenvectors against a gradient step, with the theory's prediction where one is
  registered for the optimizer's exact type (:func:`register_prediction`); the step is undone
  bit for bit;
* :func:`second_order_gains`, :func:`third_derivative`: SAM's gain with the second-order term
  :math:`\\tfrac12\\rho^2\\langle v, \\nabla^3 L[\\hat g, \\hat g]\\rangle / \\langle v, g\\rangle`,
  which decides it where the gradient barely touches :math:`v`;
* :func:`ire_mask_quality`: whether IRE's coordinate mask separates sharp from flat eigenspaces,
  and how much of it lies on inert coordinates; :func:`smallest_magnitude_eigenpairs`: the flat
  eigenvectors it is measured against;
* :func:`minibatch_decomposition`: SAM's extra term on a mini-batch split into full-data,
  Hessian-noise and gradient-noise parts;
* :func:`validity_map`: where the first-order picture holds, against
  :math:`\\rho\\lambda/\\lVert g\\rVert` and batch size;
* :func:`loss_landscape`: the loss along the top eigenvector and along filter-normalized random
  directions (Li et al., NeurIPS 2018);
* :func:`plot_gains`, :func:`plot_taylor`, :func:`plot_validity`, :func:`plot_landscape`: PNG
  figures.

Every result is a dataclass with ``to_dict()`` (strict JSON). The derivation, corrected, and
which function measures which line of it: ``docs/theory.md``.
"""

from samhess.analysis.gains import (
    directional_gains,
    sharp_flat_gains,
    smallest_magnitude_eigenpairs,
    subspace_gain,
)
from samhess.analysis.mask_quality import flat_mask_vector, ire_mask_quality
from samhess.analysis.minibatch import minibatch_decomposition
from samhess.analysis.landscape import LandscapeSlices, filter_normalized_direction, loss_landscape
from samhess.analysis.plots import plot_gains, plot_landscape, plot_taylor, plot_validity
from samhess.analysis import variant_predictions  # noqa: F401  (registers the variants' rules)
from samhess.analysis.predictions import (
    FirstOrderPrediction,
    PredictionContext,
    StepForm,
    predict_step,
    register_prediction,
)
from samhess.analysis.results import (
    DirectionalGains,
    MaskQuality,
    MinibatchDecomposition,
    SecondOrderGains,
    SharpFlatGains,
    TaylorCheck,
    TraceIdentityCheck,
    ValidityMap,
    ValidityPoint,
    ValiditySummary,
)
from samhess.analysis.second_order import second_order_gains, third_derivative
from samhess.analysis.step_model import StepMeasurement, measure_steps
from samhess.analysis.taylor import taylor_check, trace_identity_check
from samhess.analysis.validity import format_validity_table, validity_map

__all__ = [
    "taylor_check",
    "trace_identity_check",
    "directional_gains",
    "sharp_flat_gains",
    "subspace_gain",
    "smallest_magnitude_eigenpairs",
    "second_order_gains",
    "third_derivative",
    "measure_steps",
    "StepMeasurement",
    "FirstOrderPrediction",
    "PredictionContext",
    "StepForm",
    "predict_step",
    "register_prediction",
    "ire_mask_quality",
    "flat_mask_vector",
    "minibatch_decomposition",
    "validity_map",
    "format_validity_table",
    "plot_gains",
    "plot_taylor",
    "plot_validity",
    "plot_landscape",
    "loss_landscape",
    "filter_normalized_direction",
    "LandscapeSlices",
    "TaylorCheck",
    "TraceIdentityCheck",
    "DirectionalGains",
    "SharpFlatGains",
    "SecondOrderGains",
    "MaskQuality",
    "MinibatchDecomposition",
    "ValidityMap",
    "ValidityPoint",
    "ValiditySummary",
]
