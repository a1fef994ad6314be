"""A small decoder-only Transformer language model."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import TransformerStack


class DecoderTransformer(nn.Module):
    """GPT-style language model: token and learned position embeddings, causal blocks, logits.

    Maps token ids ``(B, T)`` with ``T <= context_length`` to next-token logits ``(B, T, V)``;
    position ``t`` depends only on tokens ``0..t`` (causal self-attention). Embeddings start
    from :math:`\\mathcal N(0, 0.02^2)` as in GPT-2.

    References:
        A. Radford et al., "Improving Language Understanding by Generative Pre-Training", 2018;
        A. Radford et al., "Language Models are Unsupervised Multitask Learners", 2019.

    Args:
        vocab_size: number of distinct tokens ``V``.
        context_length: longest sequence accepted (size of the position table).
        dim, depth, heads, mlp_dim, dropout: see :class:`TransformerStack`.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(context_length, dim)
        for embedding in (self.token_embedding, self.position_embedding):
            nn.init.normal_(embedding.weight, std=0.02)
        self.blocks = TransformerStack(dim, depth, heads, mlp_dim, dropout)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"sequence length {length} exceeds the model's context_length "
                f"{self.context_length}"
            )
        positions = torch.arange(length, device=tokens.device)
        hidden = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.blocks(hidden, causal=True))
