r"""What a run records every ``track_every`` steps: losses, accuracies, curvature and gains.

Each record is measured without disturbing training: the model's mode, every random number
generator (torch, numpy, Python) and, through ``directional_gains``, the parameters and the
optimizer's state are the same after a measurement as before it. Training with tracking and
training without it therefore take the same steps, and a resumed run the same as a straight one.

Curvature is measured on one fixed batch (``tracking_batch_size`` examples drawn once from the
training set by the run's seed), in eval mode, so records at different steps compare the same
function's Hessian:

* ``eigenvalues``: the ``top_k`` largest Hessian eigenvalues (Lanczos), ``lambda_max`` first;
* ``hessian_trace`` and ``hessian_trace_stderr``: Hutch++ (Meyer et al., SOSA 2021);
* ``grad_norm``: ||g|| of the mean loss on that batch;
* ``gradient_alignments``: :math:`|\langle \hat g, v_i\rangle|` for the top-``k`` eigenvectors
  (:math:`\hat g = g/\lVert g\rVert`), ``sharp_gradient_share``: their sum of squares, the share
  of :math:`\lVert g\rVert^2` in the top-``k`` eigenspace, and ``top_eigenvector_sign``: the sign
  of :math:`\langle g, v_1\rangle`, with :math:`v_1`'s sign fixed so that its largest-magnitude
  coordinate is positive (Lanczos returns either sign). Whether the seed's full-batch picture
  can show at all depends on the alignment: a sharp subspace that holds almost none of the
  gradient has gains that are ratios of tiny numbers (docs/theory.md);
* ``sharp_gain``, ``flat_gain``, ``gain_ratio``: the optimizer's step measured along the top
  eigenvectors (sharp) and the flat directions, each relative to a plain gradient step with the
  same learning rate (:func:`samhess.analysis.sharp_flat_gains`). The seed note predicts a ratio
  above 1 for SAM (its step is about (I + rho H / ||g||) g) and below 1 for IRE.
* ``sharp_gain_vs_base``, ``flat_gain_vs_base``, ``gain_ratio_vs_base`` (IRE kinds; ``None``
  for the others): the same, relative to the step IRE's own base optimizer (SGD, SAM or AdamW)
  takes from the same state (``reference=ire.optimizer``). IRE's step is
  D = (I + kappa M) D_base (Wang et al., NeurIPS 2024), so this isolates what IRE adds: a ratio
  below 1 says IRE moved flat directions further than its base did. Against the gradient
  step the ratio of AdmIRE also carries Adam's own preconditioning, which alone puts it below
  1 (plain AdamW scored 0.18 and 0.31 in two runs on the character transformer). For IRE over
  SGD without momentum or weight decay the base step is the gradient step and the two ratios
  agree.
* ``layer_curvature`` (at the records every ``layer_track_every`` steps and at the last;
  ``None`` at the others): for each layer, lambda_max and Tr(H) of its diagonal block of the
  Hessian (:mod:`samhess.experiments.layer_curvature`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: Keys of every record in metrics.jsonl, in the order they are written.
RECORD_KEYS: tuple[str, ...] = (
    "step", "epoch", "batch_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
    "grad_norm", "lambda_max", "eigenvalues", "gradient_alignments", "sharp_gradient_share",
    "top_eigenvector_sign", "hessian_trace", "hessian_trace_stderr",
    "sharp_gain", "flat_gain", "gain_ratio", "sharp_gain_vs_base", "flat_gain_vs_base",
    "gain_ratio_vs_base", "hessian_matvecs", "layer_curvature",
)


@dataclass
class TrackingSetup:
    """The fixed ingredients of every record of one run.

    Attributes:
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss.
        kind: the task kind (accuracy is reported for classification and language models).
        batch: the fixed curvature batch ``(inputs, targets)``.
        train_eval: ``(inputs, targets)`` the train loss and accuracy are measured on.
        test_eval: ``(inputs, targets)`` the test loss and accuracy are measured on.
        top_k: eigenvalues per record (and sharp directions of the gains).
        trace_matvecs: Hessian-vector products of the trace estimate.
        seed: seeds the Lanczos start vector and the trace probes.
        eval_chunk: examples per forward pass when evaluating.
    """

    loss_fn: Callable
    kind: str
    batch: tuple[torch.Tensor, torch.Tensor]
    train_eval: tuple[torch.Tensor, torch.Tensor]
    test_eval: tuple[torch.Tensor, torch.Tensor]
    top_k: int
    trace_matvecs: int
    seed: int
    eval_chunk: int = 1024


@contextlib.contextmanager
def preserved_training_state(model: nn.Module) -> Iterator[None]:
    """Restore the model's train/eval mode and every RNG state on exit."""
    was_training = model.training
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        model.train(was_training)


def has_accuracy(kind: str) -> bool:
    """Accuracy means something for classification and next-token prediction."""
    return kind in ("classification", "language_model")


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor,
             kind: str, chunk: int = 1024) -> tuple[float, float | None]:
    """Mean loss and accuracy over ``(inputs, targets)`` in eval mode, in chunks.

    Each chunk's mean loss is weighted by its number of target entries, so the result is the
    mean over all examples (or tokens) whatever the chunking.
    """
    was_training = model.training
    model.eval()
    total_loss, total_weight, correct, counted = 0.0, 0, 0, 0
    try:
        for start in range(0, inputs.shape[0], chunk):
            x, y = inputs[start:start + chunk], targets[start:start + chunk]
            outputs = model(x)
            weight = y.numel()
            total_loss += float(loss_fn(outputs, y)) * weight
            total_weight += weight
            if has_accuracy(kind):
                correct += int((outputs.argmax(dim=-1) == y).sum())
                counted += y.numel()
    finally:
        model.train(was_training)
    accuracy = correct / counted if has_accuracy(kind) and counted else None
    return total_loss / total_weight, accuracy


def gradient_alignment(gradient: torch.Tensor, eigenvectors: torch.Tensor
                       ) -> tuple[list[float] | None, float | None, int | None]:
    r"""How the gradient lies on the top eigenvectors.

    Returns:
        :math:`|\langle \hat g, v_i\rangle|` per eigenvector, their sum of squares (the share of
        :math:`\lVert g\rVert^2` in the span of orthonormal :math:`v_i`), and the sign (+1, -1 or
        0) of :math:`\langle g, v_1\rangle` with :math:`v_1`'s largest-magnitude coordinate made
        positive; ``None`` each for a zero gradient.
    """
    vectors = eigenvectors.to(gradient)
    norm = float(gradient.norm())
    if norm == 0.0:
        return None, None, None
    components = vectors.T @ gradient / norm
    first = vectors[:, 0]
    orientation = 1.0 if float(first[int(first.abs().argmax())]) >= 0 else -1.0
    sign = int(torch.sign(components[0] * orientation))
    return components.abs().tolist(), float(components.square().sum()), sign


def curvature_data(batch: tuple[Any, Any]) -> Any:
    """The tracking batch as the curvature operators' data.

    Under ``torch.distributed`` each rank keeps its contiguous shard
    (:func:`samhess.distributed.shard_batch`) and the operators all-reduce the shards'
    products (:class:`samhess.distributed.ShardedData`): every rank gets the products of the
    whole batch for a share of the cost, and the same eigenvalues and trace bit for bit. In one
    process: the batch itself, as a list of one batch (one batch whatever its parts are).
    """
    from samhess.distributed import ShardedData, get_world_size, shard_batch

    if get_world_size() == 1:
        return [batch]
    shard = shard_batch(*batch)
    return ShardedData((shard.inputs, shard.targets))


def measured_parameters(model: nn.Module, optimizer: Any) -> list[torch.Tensor]:
    """The parameters whose curvature a record measures: the trainable ones the optimizer
    updates, or every trainable parameter of ``model`` for ``optimizer=None``."""
    from samhess.curvature import trainable_parameters

    if optimizer is None:
        return trainable_parameters(model)
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def measure_curvature(model: nn.Module, optimizer: Any, setup: TrackingSetup) -> dict[str, Any]:
    """Eigenvalues, trace, gradient norm and sharp/flat gains on the tracking batch.

    The eigenvalues, the trace, the gradient and its alignment come from products over
    :func:`curvature_data`, sharded across the ranks under ``torch.distributed``; the gains
    take one real step of the optimizer on the whole batch (on every rank).

    The gains are measured against the gradient step and, for IRE, also against its base
    optimizer's step (the ``*_vs_base`` keys; ``None`` for optimizers without IRE). With
    ``optimizer=None`` the curvature is that of every trainable parameter and the gain keys are
    ``None``.
    """
    from samhess.analysis import sharp_flat_gains
    from samhess.curvature import HessianOperator, eigenpairs, trace
    from samhess.optim import IRE

    params = measured_parameters(model, optimizer)
    operator = HessianOperator(model, setup.loss_fn, curvature_data(setup.batch), params=params)
    top = eigenpairs(operator, setup.top_k, which="largest", seed=setup.seed)
    estimate = trace(operator, setup.trace_matvecs, method="hutch++", seed=setup.seed)
    gradient = operator.gradient()
    if optimizer is None:
        gains = None
        grad_norm = float(gradient.norm())
    else:
        gains = sharp_flat_gains(model, setup.loss_fn, setup.batch, optimizer, k=setup.top_k,
                                 params=params, sharp=top, seed=setup.seed)
        grad_norm = float(gains.grad_norm)
    vs_base = None
    if isinstance(optimizer, IRE):
        vs_base = sharp_flat_gains(model, setup.loss_fn, setup.batch, optimizer, k=setup.top_k,
                                   reference=optimizer.optimizer, params=params, sharp=top,
                                   seed=setup.seed)
    eigenvalues = [float(v) for v in top.eigenvalues]
    alignments, share, sign = gradient_alignment(gradient, top.eigenvectors)
    return {
        "grad_norm": grad_norm,
        "lambda_max": eigenvalues[0],
        "eigenvalues": eigenvalues,
        "gradient_alignments": alignments,
        "sharp_gradient_share": share,
        "top_eigenvector_sign": sign,
        "hessian_trace": float(estimate.estimate),
        "hessian_trace_stderr": float(estimate.stderr),
        "sharp_gain": None if gains is None else float(gains.sharp_gain),
        "flat_gain": None if gains is None else float(gains.flat_gain),
        "gain_ratio": None if gains is None else float(gains.ratio),
        "sharp_gain_vs_base": None if vs_base is None else float(vs_base.sharp_gain),
        "flat_gain_vs_base": None if vs_base is None else float(vs_base.flat_gain),
        "gain_ratio_vs_base": None if vs_base is None else float(vs_base.ratio),
        "hessian_matvecs": int(operator.num_matvecs),
    }


def measure_record(model: nn.Module, optimizer: Any, setup: TrackingSetup, *, step: int,
                   epoch: float, batch_loss: float | None,
                   layers: bool = False) -> dict[str, Any]:
    """One record of metrics.jsonl (keys :data:`RECORD_KEYS`), leaving training undisturbed.

    With ``layers``, the record also holds the per-layer curvature (``layer_curvature``).
    """
    from samhess.experiments.layer_curvature import measure_layer_curvature

    with preserved_training_state(model):
        train_loss, train_accuracy = evaluate(model, setup.loss_fn, *setup.train_eval,
                                              setup.kind, setup.eval_chunk)
        test_loss, test_accuracy = evaluate(model, setup.loss_fn, *setup.test_eval,
                                            setup.kind, setup.eval_chunk)
        curvature = measure_curvature(model, optimizer, setup)
        per_layer = None
        if layers:
            per_layer = measure_layer_curvature(model, setup.loss_fn,
                                                curvature_data(setup.batch),
                                                measured_parameters(model, optimizer),
                                                trace_matvecs=setup.trace_matvecs,
                                                seed=setup.seed)
    record = {
        "step": step,
        "epoch": epoch,
        "batch_loss": batch_loss,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        **curvature,
        "layer_curvature": per_layer,
    }
    return {key: record[key] for key in RECORD_KEYS}
