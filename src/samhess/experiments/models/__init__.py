"""Models for experiments, built by name for a data set: :func:`build_model`.

* ``"mlp"`` -- :class:`.mlp.MLP`, any classification or regression data;
* ``"cnn"`` -- :class:`.cnn.ConvNet`, 1-D signals and 2-D images, with batch normalization;
* ``"resnet20"``, ``"resnet56"`` -- :class:`.resnet.CifarResNet` (He et al. 2016, option A);
* ``"vit"`` -- :class:`.vit.VisionTransformer`, images;
* ``"transformer"`` -- :class:`.transformer.DecoderTransformer`, token sequences.

:func:`loss_for` gives the matching loss.
"""

from .losses import TokenCrossEntropy, loss_for
from .registry import MODEL_NAMES, build_model, check_fits, default_model_for, model_options

__all__ = [
    "MODEL_NAMES",
    "TokenCrossEntropy",
    "build_model",
    "check_fits",
    "default_model_for",
    "loss_for",
    "model_options",
]
