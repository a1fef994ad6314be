"""samhess under the Hugging Face Trainer, against the plain two-step loop on the same batches.

A token tagger (padded positions labelled -100, a BatchNorm layer) trains for a few steps with
``gradient_accumulation_steps=2`` in float64. The reference is the large-batch SAM step of
``docs/optim.md``: every micro-batch's backward at w, ``first_step`` from the accumulated
gradient, every micro-batch again at w + e under ``disable_running_stats``, clipping,
``second_step``. The loss of a micro-batch is normalized as the Trainer normalizes it: by the
step's count of labelled tokens when the model takes ``num_items_in_batch``, else its own mean
divided by the accumulation steps.
"""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers", reason="the integrations extra is not installed")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402

from samhess.integrations.transformers import SharpnessAwareTrainer  # noqa: E402
from samhess.optim import ASAM, IRE, MSAM, SAM, LookSAM, disable_running_stats  # noqa: E402

BATCH, ACCUMULATE, STEPS, LENGTH = 4, 2, 3, 5


class Tagger(nn.Module):
    """Per-token classifier; ``forward(x, labels)`` returns the loss like a transformers model."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.hidden = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 3)
        self.to(dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.hidden(x).flatten(0, 1))
        return self.out(torch.tanh(h))

    def token_losses(self, x, labels):
        return nn.functional.cross_entropy(self.logits(x), labels.flatten(), ignore_index=-100,
                                           reduction="none")

    def forward(self, x, labels):
        losses = self.token_losses(x, labels)
        return {"loss": losses.sum() / labels.ne(-100).sum()}


class TokenCountTagger(Tagger):
    """Takes the Trainer's ``num_items_in_batch`` (labelled tokens of the whole step)."""

    forward_calls = 0

    def forward(self, x, labels, num_items_in_batch=None, **kwargs):
        self.forward_calls += 1
        losses = self.token_losses(x, labels)
        if num_items_in_batch is None:
            return {"loss": losses.sum() / labels.ne(-100).sum()}
        return {"loss": losses.sum() / num_items_in_batch}


def examples(count: int, dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    rows = []
    for index in range(count):
        labels = torch.randint(0, 3, (LENGTH,), generator=generator)
        labels[LENGTH - 1 - index % 3:] = -100  # uneven padding: micro-batches count differently
        rows.append({"x": torch.randn(LENGTH, 4, generator=generator, dtype=dtype),
                     "labels": labels})
    return rows


class InOrderTrainer(SharpnessAwareTrainer):
    """Feeds the examples in order, so the reference loop sees the same batches."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


OPTIMIZERS = {
    "sam": lambda params: SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
    "asam": lambda params: ASAM(params, torch.optim.AdamW, rho=0.5, lr=0.01),
    "sam-ire": lambda params: IRE(SAM(params, torch.optim.SGD, rho=0.05, lr=0.1), kappa=1.0,
                                  gamma=0.5, refresh_every=2),
    "ire": lambda params: IRE(torch.optim.AdamW(params, lr=0.01), kappa=1.0, gamma=0.5,
                              refresh_every=2),
    # SAM's step at steps 0 and 2, its single-pass step (no pass at w + e) at step 1
    "looksam": lambda params: LookSAM(params, torch.optim.SGD, rho=0.05, k=2, lr=0.1),
}


def diagonal(model, inputs):
    # any deterministic estimate serves: the test compares two paths over the same one
    return [p.detach().abs() + inputs["x"].abs().mean() for p in model.parameters()]


def train(model_class, optimizer, tmp_path, max_grad_norm, dtype=torch.float64, bf16=False):
    model = model_class(dtype)
    args = transformers.TrainingArguments(
        bf16=bf16,
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE, max_grad_norm=max_grad_norm,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = InOrderTrainer(model=model, args=args,
                             train_dataset=examples(BATCH * ACCUMULATE * STEPS, dtype),
                             optimizers=(OPTIMIZERS[optimizer](model.parameters()), None),
                             curvature_diagonal=diagonal)
    trainer.train()
    return model, trainer


def reference(model_class, optimizer, max_grad_norm, dtype=torch.float64, autocast=None):
    model = model_class(dtype)
    opt = OPTIMIZERS[optimizer](model.parameters())
    two_pass = isinstance(opt.optimizer if isinstance(opt, IRE) else opt, SAM)
    rows = examples(BATCH * ACCUMULATE * STEPS, dtype)
    batches = [{key: torch.stack([row[key] for row in rows[i:i + BATCH]]) for key in rows[0]}
               for i in range(0, len(rows), BATCH)]
    losses = []
    for step in range(STEPS):
        window = batches[step * ACCUMULATE:(step + 1) * ACCUMULATE]
        tokens = sum(batch["labels"].ne(-100).sum() for batch in window)
        if isinstance(opt, IRE) and opt.needs_refresh():
            opt.update_mask(diagonal(model, window[0]))

        def accumulate():
            total = 0.0
            for batch in window:
                with autocast() if autocast else torch.autocast("cpu", enabled=False):
                    token_losses = model.token_losses(batch["x"], batch["labels"])
                if model_class is TokenCountTagger:
                    loss = token_losses.sum() / tokens
                else:
                    loss = token_losses.sum() / batch["labels"].ne(-100).sum() / ACCUMULATE
                loss.backward()
                total += loss.detach()
            return total

        losses.append(float(accumulate()))
        if two_pass and opt.first_step(zero_grad=True):
            with disable_running_stats(model):
                accumulate()
        if max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if two_pass:
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad()
    return model, losses


@pytest.mark.parametrize(
    "model_class,optimizer,max_grad_norm",
    [
        (TokenCountTagger, "sam", 0.0),
        (Tagger, "sam", 0.0),
        (TokenCountTagger, "asam", 0.5),
        (TokenCountTagger, "sam-ire", 0.0),
        (TokenCountTagger, "ire", 0.0),
        (TokenCountTagger, "looksam", 0.5),
    ],
)
def test_trainer_equals_the_large_batch_two_step_loop(model_class, optimizer, max_grad_norm,
                                                      tmp_path):
    ours, trainer = train(model_class, optimizer, tmp_path, max_grad_norm)
    theirs, losses = reference(model_class, optimizer, max_grad_norm)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert trainer.state.global_step == STEPS
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == pytest.approx(losses, rel=1e-6)  # the Trainer sums losses in float32
    if model_class is TokenCountTagger:  # the replay at w + e only on the steps that perturb
        perturbed = {"ire": 0, "looksam": 2}.get(optimizer, STEPS)
        assert ours.forward_calls == (STEPS + perturbed) * ACCUMULATE


def test_bfloat16_training_agrees_with_the_autocast_loop(tmp_path):
    ours, _ = train(TokenCountTagger, "sam", tmp_path, 0.0, dtype=torch.float32, bf16=True)
    theirs, _ = reference(TokenCountTagger, "sam", 0.0, dtype=torch.float32,
                          autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-6, msg=name)
    untouched = TokenCountTagger(torch.float32)
    assert not torch.equal(ours.hidden.weight, untouched.hidden.weight)


def test_the_micro_batch_perturbation_would_differ():
    """The reference differs from perturbing per micro-batch, so the test above can fail."""
    model = TokenCountTagger()
    rows = examples(BATCH * ACCUMULATE)
    batches = [{key: torch.stack([row[key] for row in rows[i:i + BATCH]]) for key in rows[0]}
               for i in range(0, len(rows), BATCH)]
    grads = []
    for batch in batches:
        model.zero_grad()
        model.token_losses(batch["x"], batch["labels"]).mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    directions = [g / g.norm() for g in grads]
    assert (directions[0] - directions[1]).norm() > 0.1


def test_fp16_with_sam_is_refused_when_training_starts(tmp_path):
    model = Tagger()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True,
                                          report_to="none", save_strategy="no")
    args.fp16 = True  # the check reads the flag; CPU runs cannot build a float16 scaler here
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=examples(4),
                                    optimizers=(OPTIMIZERS["sam"](model.parameters()), None))
    with pytest.raises(ValueError, match=r"^fp16=True is not supported with a samhess SAM "
                                         r"optimizer in SharpnessAwareTrainer"):
        trainer.create_optimizer()


def test_msam_over_micro_batches_is_refused_when_training_starts(tmp_path):
    model = Tagger()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True,
                                          report_to="none", save_strategy="no")
    optimizer = MSAM(model.parameters(), torch.optim.SGD, m=2, lr=0.1)
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=examples(4),
                                    optimizers=(optimizer, None))
    with pytest.raises(ValueError, match=r"^MSAM with m=2 is not supported in "
                                         r"SharpnessAwareTrainer: it perturbs each of m"):
        trainer.create_optimizer()


def test_ire_without_a_curvature_diagonal_is_refused(tmp_path):
    model = Tagger()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True,
                                          report_to="none", save_strategy="no")
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=examples(4),
                                    optimizers=(OPTIMIZERS["ire"](model.parameters()), None))
    with pytest.raises(ValueError, match=r"trains with IRE but has no curvature_diagonal"):
        trainer.train()
