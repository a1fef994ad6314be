"""Two-rank DDP worker (``torchrun --nproc-per-node 2 lightning_ddp_worker.py OUT``).

Every rank trains the same SAM module with ``strategy="ddp"`` and ``accumulate_grad_batches=2`` on
its own shard (rank r: examples r, r + 2, ...). Rank 0 then runs the single-process large-batch
two-step loop over both shards and writes the largest weight difference and the step count to
OUT as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from samhess.integrations.lightning import SharpnessAwareMixin
from samhess.optim import SAM

RANKS, BATCH, ACCUMULATE, STEPS = 2, 8, 2, 3


def network() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def sam(params) -> SAM:
    return SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


class Sharded(SharpnessAwareMixin, pl.LightningModule):
    def __init__(self, data: TensorDataset) -> None:
        super().__init__()
        self.net = network()
        self.data = data

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return sam(self.parameters())

    def train_dataloader(self):
        shard = Subset(self.data, range(self.global_rank, len(self.data), RANKS))
        return DataLoader(shard, batch_size=BATCH)


def main(out: str) -> None:
    generator = torch.Generator().manual_seed(0)
    size = RANKS * BATCH * ACCUMULATE * STEPS
    data = TensorDataset(torch.randn(size, 6, generator=generator, dtype=torch.float64),
                         torch.randint(0, 3, (size,), generator=generator))
    module = Sharded(data)
    trainer = pl.Trainer(max_steps=STEPS, strategy="ddp", devices=RANKS, accelerator="cpu",
                         precision="64-true", accumulate_grad_batches=ACCUMULATE,
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    # Lightning leaves the gloo group alive; a rank exiting with it still open can abort in gloo's
    # threads at interpreter shutdown ("terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if int(os.environ["RANK"]) != 0:
        return

    model = network()
    optimizer = sam(model.parameters())
    shards = [list(range(rank, size, RANKS)) for rank in range(RANKS)]

    def large_batch(step: int) -> None:
        for micro in range(ACCUMULATE):
            start = (step * ACCUMULATE + micro) * BATCH
            for shard in shards:
                rows = shard[start:start + BATCH]
                loss = nn.functional.cross_entropy(model(data.tensors[0][rows]), data.tensors[1][rows])
                (loss / (RANKS * ACCUMULATE)).backward()

    for step in range(STEPS):
        large_batch(step)
        optimizer.first_step(zero_grad=True)
        large_batch(step)
        optimizer.second_step(zero_grad=True)
    difference = max((a - b).abs().max().item()
                     for a, b in zip(module.net.parameters(), model.parameters()))
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"max_difference": difference, "global_step": trainer.global_step}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
