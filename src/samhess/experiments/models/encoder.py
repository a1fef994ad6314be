"""A stack of pre-norm Transformer layers, differentiable twice and in forward mode."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class TransformerStack(nn.Module):
    """``depth`` pre-norm ``nn.TransformerEncoderLayer`` blocks, then a final ``LayerNorm``.

    Each block is :math:`x + \\mathrm{MHA}(\\mathrm{LN}(x))` followed by
    :math:`x + \\mathrm{MLP}(\\mathrm{LN}(x))` with a GELU MLP (pre-norm as in GPT-2). The blocks
    are built one by one, not cloned, so that they start from independent random weights.

    Attention runs on PyTorch's "math" scaled-dot-product kernel: the fused CPU/GPU kernels have
    no second derivative and no forward-mode derivative, and the curvature layer needs both for
    Hessian-vector products.

    References:
        A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
        R. Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020.

    Args:
        dim: width of the token representations.
        depth: number of blocks.
        heads: attention heads (must divide ``dim``).
        mlp_dim: hidden width of each block's MLP.
        dropout: dropout rate inside the blocks (0 keeps the loss deterministic).
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Transform ``(B, T, dim)`` tokens; with ``causal``, position ``t`` sees only ``<= t``."""
        mask = None
        if causal:
            length = tokens.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
        with sdpa_kernel(SDPBackend.MATH):
            for layer in self.layers:
                tokens = layer(tokens, src_mask=mask, is_causal=causal)
        return self.norm(tokens)
