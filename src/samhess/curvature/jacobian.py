"""Products with the Jacobian of the model's outputs with respect to its parameters.

For outputs :math:`f(w)` of a batch, :math:`J = \\partial f / \\partial w`. Reverse mode gives
:math:`J^\\top u` directly; :math:`J v` comes from reverse mode twice, since
:math:`J^\\top u` is linear in :math:`u` and :math:`J v = \\nabla_u \\langle J^\\top u, v \\rangle`
(the "double-vjp" construction). Both use one graph built per batch, so they work wherever
double backward works, BatchNorm in train mode included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samhess.curvature.operators import gradient_products


class OutputJacobian:
    """:math:`J v` and :math:`J^\\top u` for one batch's outputs ``outputs = f(leaves)``."""

    def __init__(self, outputs: torch.Tensor, leaves: Sequence[torch.Tensor]) -> None:
        self.outputs = outputs
        self.leaves = list(leaves)
        self._dual = torch.zeros_like(outputs, requires_grad=True)
        self._transposed: tuple[torch.Tensor | None, ...] = (
            torch.autograd.grad(outputs, self.leaves, self._dual, create_graph=True, allow_unused=True)
            if outputs.requires_grad
            else tuple(None for _ in self.leaves)
        )

    def jvp(self, vector: Sequence[torch.Tensor]) -> torch.Tensor:
        """:math:`J v`, shaped like ``outputs``, for ``vector`` shaped like the leaves."""
        pairs = [(t, v) for t, v in zip(self._transposed, vector) if t is not None and t.requires_grad]
        if not pairs:
            return torch.zeros_like(self.outputs)
        (product,) = torch.autograd.grad(
            [t for t, _ in pairs], self._dual, [v for _, v in pairs], retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self.outputs) if product is None else product

    def vjp(self, covector: torch.Tensor) -> list[torch.Tensor]:
        """:math:`J^\\top u` as tensors shaped like the leaves (zeros for unused leaves)."""
        return gradient_products([self.outputs], self.leaves, [covector])

