"""A small Vision Transformer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .encoder import TransformerStack


class VisionTransformer(nn.Module):
    """ViT: non-overlapping patches, a class token, learned positions, Transformer, linear head.

    An image ``(C, H, W)`` is cut into ``(H/p) * (W/p)`` patches of ``p x p`` pixels, each mapped
    linearly to ``dim`` features (a stride-``p`` convolution); a learned class token is prepended,
    learned position embeddings added, and the head reads the class token after the encoder.

    Reference:
        A. Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
        at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929

    Args:
        input_shape: ``(C, H, W)`` with ``H`` and ``W`` divisible by ``patch_size``.
        num_classes: number of classes.
        patch_size: side ``p`` of the square patches.
        dim, depth, heads, mlp_dim, dropout: see :class:`TransformerStack`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        num_patches = (height // patch_size) * (width // patch_size)
        self.patch_embedding = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.encoder = TransformerStack(dim, depth, heads, mlp_dim, dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)
        class_tokens = self.class_token.expand(images.shape[0], -1, -1)
        tokens = torch.cat([class_tokens, patches], dim=1) + self.position_embedding
        return self.head(self.encoder(tokens)[:, 0])
