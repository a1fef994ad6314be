r"""Curvature per layer: the top eigenvalue and the trace of each layer's block of the Hessian.

With the parameters split into blocks :math:`w = (w_1, \dots, w_B)`, one per layer, the
diagonal block :math:`H_{bb} = \partial^2 L / \partial w_b^2` is the Hessian of the loss as a
function of layer :math:`b` alone, the others held fixed. Two facts tie the blocks to the whole
Hessian :math:`H`:

.. math::

    \operatorname{tr} H = \sum_b \operatorname{tr} H_{bb},
    \qquad
    \lambda_{\max}(H_{bb}) \le \lambda_{\max}(H)

(the trace of a matrix is the sum of its diagonal blocks' traces; a principal submatrix's
largest eigenvalue is at most the matrix's, by Cauchy's interlacing theorem). So the per-layer
traces say where the curvature of :math:`\operatorname{tr} H` sits, and the per-layer
:math:`\lambda_{\max}` which layer comes closest to the sharpest direction.

Each block is measured through the operators' ``params=``
(:class:`samhess.curvature.HessianOperator`): the top eigenvalue by Lanczos, the trace by
Hutch++ (Meyer et al., SOSA 2021); a block with at most as many parameters as the trace's
product budget is formed densely, column by column, and measured exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ParameterBlock", "parameter_blocks", "measure_layer_curvature"]


@dataclass(frozen=True)
class ParameterBlock:
    """The parameters one module owns directly (a layer's weight and bias).

    Attributes:
        name: the module's path in the model (``layers.1``; ``""`` for the model itself).
        module: the module's class name (``Linear``).
        params: its parameters, in registration order.
    """

    name: str
    module: str
    params: tuple[nn.Parameter, ...]

    @property
    def size(self) -> int:
        """The number of scalar parameters."""
        return sum(p.numel() for p in self.params)


def parameter_blocks(model: nn.Module, params: Sequence[torch.Tensor]) -> list[ParameterBlock]:
    """``params`` grouped by the module that owns them, one block per layer, in model order.

    A parameter shared by several modules (tied weights) belongs to the first that owns it.

    Raises:
        ValueError: a parameter of ``params`` is not a parameter of ``model``.
    """
    wanted = {id(p) for p in params}
    seen: set[int] = set()
    blocks = []
    for name, module in model.named_modules():
        owned = []
        for parameter in module.parameters(recurse=False):
            if id(parameter) in wanted and id(parameter) not in seen:
                seen.add(id(parameter))
                owned.append(parameter)
        if owned:
            blocks.append(ParameterBlock(name, type(module).__name__, tuple(owned)))
    if len(seen) != len(wanted):
        raise ValueError("params holds tensors that are not parameters of the model")
    return blocks


def _dense_block(operator: Any) -> tuple[float, float]:
    """Exact (lambda_max, trace) of a small block, from its columns."""
    identity = torch.eye(operator.dim, dtype=operator.dtype, device=operator.device)
    matrix = operator @ identity
    matrix = (matrix + matrix.T) / 2
    return float(torch.linalg.eigvalsh(matrix)[-1]), float(torch.trace(matrix))


def measure_layer_curvature(model: nn.Module, loss_fn: Callable, batch: Any,
                            params: Sequence[torch.Tensor], *, trace_matvecs: int,
                            seed: int) -> list[dict[str, Any]]:
    """lambda_max and Tr of the Hessian block of each layer of ``params``, on ``batch``.

    Args:
        model: the network (evaluated in eval mode by the operator).
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss.
        batch: ``(inputs, targets)``.
        params: the parameters measured (those the optimizer trains).
        trace_matvecs: Hessian-vector products of each block's Hutch++ trace; a block of at
            most this many parameters is measured exactly instead.
        seed: seeds the Lanczos start vectors and the trace probes.

    Returns:
        One dict per block, in model order: ``block`` (module path), ``module`` (class name),
        ``parameters``, ``lambda_max``, ``hessian_trace`` and ``hessian_trace_stderr`` (0.0
        for an exact trace), ``hessian_matvecs``.
    """
    from samhess.curvature import HessianOperator, eigenpairs, trace

    out = []
    for block in parameter_blocks(model, params):
        operator = HessianOperator(model, loss_fn, batch, params=list(block.params))
        if operator.dim <= trace_matvecs:
            lambda_max, block_trace = _dense_block(operator)
            stderr = 0.0
        else:
            lambda_max = float(eigenpairs(operator, 1, which="largest", seed=seed)
                               .eigenvalues[0])
            estimate = trace(operator, trace_matvecs, method="hutch++", seed=seed)
            block_trace, stderr = float(estimate.estimate), float(estimate.stderr)
        out.append({"block": block.name, "module": block.module, "parameters": block.size,
                    "lambda_max": lambda_max, "hessian_trace": block_trace,
                    "hessian_trace_stderr": stderr,
                    "hessian_matvecs": int(operator.num_matvecs)})
    return out
