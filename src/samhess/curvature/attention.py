"""Scaled-dot-product attention that can be differentiated twice and in forward mode.

``torch.nn.functional.scaled_dot_product_attention`` dispatches to fused kernels (flash,
memory-efficient, cuDNN) that have a first derivative only: a Hessian-vector product through
them fails with ``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is
not implemented``, and forward mode (``torch.func.jvp``) fails likewise. The "math" kernel
writes attention out as matrix products and a softmax,

.. math::

    \\operatorname{softmax}\\!\\Big(\\frac{Q K^\\top}{\\sqrt{d}} + M\\Big) V,

which autograd differentiates to any order, in either mode. It computes the same function as
the fused kernels, up to rounding.

Every place where samhess runs a model (the curvature operators, the analysis functions) does
so inside :func:`math_attention`, so users' models need no change. The kernel choice is
PyTorch's process-wide flag, set on entry and put back as it was on exit: outside samhess's own
calls the model attends with whichever kernels the user enabled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run the block with scaled-dot-product attention on the math kernel only."""
    with sdpa_kernel(SDPBackend.MATH):
        yield
