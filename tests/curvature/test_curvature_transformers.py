"""A Hugging Face GPT-2 with its default (``sdpa``) attention, from a dict batch, against dense answers.

The model is randomly initialized from a tiny ``GPT2Config`` (nothing is downloaded). The
batch is what a collator gives (``input_ids``, ``attention_mask``, ``labels``); the loss is
:class:`~samhess.curvature.TokenCrossEntropy` on the model's ``ModelOutput`` with the labels
shifted to next-token targets, which is the loss GPT-2 computes from ``labels`` itself.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from samhess.curvature import GGNOperator, HessianOperator, TokenCrossEntropy, eigenpairs

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_problem():
    config = transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=4, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    assert model.config._attn_implementation == "sdpa"
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 11, (3, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    attention_mask[2, 3:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    collated = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = collated["labels"][:, 1:]
    batch = ({key: collated[key] for key in ("input_ids", "attention_mask")}, targets)
    return model, collated, batch


def flat_logits(model, inputs):
    named = dict(model.named_parameters())
    sizes = [p.numel() for p in named.values()]
    point = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def logits_at(flat):
        values = {n: c.view_as(p) for (n, p), c in zip(named.items(), torch.split(flat, sizes))}
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(model, values, (), inputs).logits

    return logits_at, point


def token_loss(logits, targets):
    counted = targets != -100
    return -logits.log_softmax(-1)[counted].gather(-1, targets[counted][:, None]).mean()


def test_gpt2_curvature_from_a_collated_batch_equals_the_dense_answer(gpt2_problem):
    model, collated, batch = gpt2_problem
    inputs, targets = batch
    loss_fn = TokenCrossEntropy()
    with torch.no_grad():
        own = model(**collated).loss  # GPT-2's own shifted loss, in float32
        assert float(loss_fn(model(**inputs), targets)) == pytest.approx(float(own), rel=1e-6)

    logits_at, point = flat_logits(model, inputs)
    hessian = torch.autograd.functional.hessian(lambda w: token_loss(logits_at(w), targets), point)
    logits = logits_at(point).detach()
    jacobian = torch.autograd.functional.jacobian(logits_at, point).reshape(logits.numel(), -1)
    loss_hessian = torch.autograd.functional.hessian(
        lambda f: token_loss(f.reshape(logits.shape), targets), logits.reshape(-1)
    )
    ggn = jacobian.T @ loss_hessian @ jacobian

    V = torch.randn(point.numel(), 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for method in ("double-backward", "forward-over-reverse"):
        H = HessianOperator(model, loss_fn, batch, method=method)
        torch.testing.assert_close(H @ V, hessian @ V, rtol=1e-10, atol=1e-12)
    H = HessianOperator(model, loss_fn, batch)
    torch.testing.assert_close(
        eigenpairs(H, 2).eigenvalues, torch.linalg.eigvalsh(hessian).flip(0)[:2], rtol=1e-8, atol=0
    )
    torch.testing.assert_close(GGNOperator(model, loss_fn, batch) @ V, ggn @ V, rtol=1e-10, atol=1e-12)
