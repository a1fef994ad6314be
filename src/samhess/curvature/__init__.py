"""Curvature of the training loss: Hessian, Gauss-Newton and Fisher operators, and estimators.

Operators are matrix-free symmetric ``dim x dim`` matrices over the flat parameter vector
(:mod:`samhess.curvature.vectors`), averaged over the data
(:func:`samhess.curvature.data.mean_over_data`):

* :class:`HessianOperator` -- exact Hessian-vector products;
* :class:`GGNOperator` -- the generalized Gauss-Newton matrix :math:`J^\\top \\nabla^2_f L J`;
* :class:`FisherOperator` -- the sampled-label Fisher; :func:`fisher_diagonal` -- its
  Gauss-Newton-Bartlett diagonal (IRE's curvature estimate).

Estimators take any operator (or a square tensor):

* :func:`eigenpairs` -- extreme eigenpairs by restarted Lanczos;
* :func:`trace` -- Hutchinson, Hutch++, XTrace;
* :func:`diagonal` -- exact, Hutchinson, Gauss-Newton-Bartlett;
* :func:`spectral_density` -- stochastic Lanczos quadrature, :func:`plot_spectral_density`;
* :func:`dense_hessian` -- the explicit matrix for small models.

Data (:mod:`samhess.curvature.batches`, :mod:`samhess.curvature.data`): batches
``(inputs, targets)`` with inputs a tensor, a tuple or a mapping of the model's arguments, and
targets anything the loss takes; batches of a loader are weighted by the units their loss
averages over (:mod:`samhess.curvature.units`, :class:`TokenCrossEntropy` for padded tokens).
Attention runs on the math kernel inside samhess (:mod:`samhess.curvature.attention`).
"""

from samhess.curvature.data import mean_over_data
from samhess.curvature.dense import dense_hessian
from samhess.curvature.density import SpectralDensity, plot_spectral_density, spectral_density
from samhess.curvature.diagonal import diagonal
from samhess.curvature.eigen import Eigenpairs, eigenpairs
from samhess.curvature.fisher import FisherOperator, fisher_diagonal
from samhess.curvature.ggn import GGNOperator
from samhess.curvature.hessian import HessianOperator
from samhess.curvature.losses import detect_loss_kind
from samhess.curvature.operators import CurvatureOperator, MatrixOperator
from samhess.curvature.token_loss import TokenCrossEntropy
from samhess.curvature.trace import TraceEstimate, trace
from samhess.curvature.vectors import flatten, trainable_parameters, unflatten

__all__ = [
    "CurvatureOperator",
    "Eigenpairs",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "MatrixOperator",
    "SpectralDensity",
    "TokenCrossEntropy",
    "TraceEstimate",
    "dense_hessian",
    "detect_loss_kind",
    "diagonal",
    "eigenpairs",
    "fisher_diagonal",
    "flatten",
    "mean_over_data",
    "plot_spectral_density",
    "spectral_density",
    "trace",
    "trainable_parameters",
    "unflatten",
]
