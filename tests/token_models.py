"""A tiny causal transformer as users write them, padded token batches, and dense references.

The model calls ``F.scaled_dot_product_attention`` (whose fused kernels have no second
derivative), takes keyword inputs (``input_ids``, ``attention_mask``), returns an object with a
``.logits`` attribute, ties its output layer to its embedding and uses LayerNorm. References
are computed here, independently of samhess: ``torch.autograd.functional`` (reverse mode, one
row at a time) on the loss as a function of the flat parameter vector, under the math attention
kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

VOCAB, CONTEXT, WIDTH, HEADS = 7, 6, 8, 2
IGNORE = -100


@dataclass
class CausalOutput:
    logits: torch.Tensor


class TinyCausalTransformer(nn.Module):
    """Token + position embeddings, one pre-norm attention block, LayerNorm, tied output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(0.3 * torch.randn(CONTEXT, WIDTH))
        self.norm = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 12), nn.Tanh(), nn.Linear(12, WIDTH))
        self.final_norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embedding.weight
        self.kernel_flags: list[tuple[bool, bool]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CausalOutput:
        batch, length = input_ids.shape
        self.kernel_flags.append(
            (torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled())
        )
        hidden = self.embedding(input_ids) + self.position[:length]
        heads = self.qkv(self.norm(hidden)).view(batch, length, 3, HEADS, WIDTH // HEADS)
        query, key, value = heads.permute(2, 0, 3, 1, 4)
        allowed = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
            allowed = allowed | torch.eye(length, dtype=torch.bool, device=input_ids.device)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed)
        hidden = hidden + attended.transpose(1, 2).reshape(batch, length, WIDTH)
        hidden = hidden + self.mlp(self.norm(hidden))
        return CausalOutput(self.head(self.final_norm(hidden)))


def make_transformer(seed: int = 0, dtype: torch.dtype = torch.float64) -> TinyCausalTransformer:
    torch.manual_seed(seed)
    return TinyCausalTransformer().to(dtype)


def token_batch(lengths: list[int], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sequences of the given lengths padded to ``CONTEXT``, with next-token targets.

    Targets are the inputs shifted left by one; the last position and the padding are ignored.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), CONTEXT), generator=generator)
    mask = torch.zeros(len(lengths), CONTEXT, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    targets = torch.full_like(ids, IGNORE)
    targets[:, :-1] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
    return {"input_ids": ids, "attention_mask": mask}, targets


def concatenate(batches):
    """The batches joined into one: mappings key by key, tensors along dimension 0."""
    inputs = {key: torch.cat([b[0][key] for b in batches]) for key in batches[0][0]}
    return inputs, torch.cat([b[1] for b in batches])


def _flat_layout(model: nn.Module):
    named = dict(model.named_parameters())
    names = list(named)
    shapes = [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]
    point = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def values(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}

    return values, point


def logits_function(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """``(logits_at(flat), point)``: the logits as a function of the flat parameters (math kernel)."""
    values, point = _flat_layout(model)

    def logits_at(flat: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(model, values(flat), (), inputs).logits

    return logits_at, point


def loss_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the positions whose target is not ignored, written out."""
    counted = targets != IGNORE
    log_probabilities = logits.log_softmax(-1)[counted]
    return -log_probabilities.gather(-1, targets[counted][:, None]).mean()


def reference_gradient(model: nn.Module, batch) -> torch.Tensor:
    logits_at, point = logits_function(model, batch[0])
    point = point.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_of_logits(logits_at(point), batch[1]), point)
    return gradient


def reference_hessian(model: nn.Module, batch) -> torch.Tensor:
    """The dense Hessian by ``torch.autograd.functional.hessian`` (one row at a time)."""
    logits_at, point = logits_function(model, batch[0])
    return torch.autograd.functional.hessian(lambda w: loss_of_logits(logits_at(w), batch[1]), point)


def reference_jacobian(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, J)`` with ``J`` the ``(logits.numel(), dim)`` Jacobian of the logits."""
    logits_at, point = logits_function(model, batch[0])
    logits = logits_at(point).detach()
    jacobian = torch.autograd.functional.jacobian(logits_at, point).reshape(logits.numel(), -1)
    return logits, jacobian


def reference_ggn(model: nn.Module, batch) -> torch.Tensor:
    """:math:`J^\\top \\nabla^2_f L\\, J` from the full Jacobian and the loss Hessian in the logits."""
    logits, jacobian = reference_jacobian(model, batch)
    loss_hessian = torch.autograd.functional.hessian(
        lambda f: loss_of_logits(f.reshape(logits.shape), batch[1]), logits.reshape(-1)
    )
    return jacobian.T @ loss_hessian @ jacobian


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))
