"""Measurements in train mode (eval_mode=False) leave BatchNorm statistics, dropout's random
stream and everything else exactly as they were."""

from __future__ import annotations

import copy

import torch
from torch import nn

from samhess.analysis import directional_gains, minibatch_decomposition, taylor_check
from samhess.optim import SAM


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2),
                          nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    inputs = torch.randn(32, 6, dtype=torch.float64)
    targets = torch.randint(0, 3, (32,))
    return model, nn.CrossEntropyLoss(), (inputs, targets)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_mode_measurements_restore_everything():
    model, loss_fn, batch = _model_and_batch()
    model.train()
    model[5].eval()  # a frozen BatchNorm inside a model in train mode
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        return loss

    optimizer.step(closure)  # momentum buffers and BatchNorm statistics now exist
    before = _state(model)
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    directions = torch.eye(sum(p.numel() for p in model.parameters()), dtype=torch.float64)[:, :3]

    directional_gains(model, loss_fn, batch, optimizer, directions, eval_mode=False)
    taylor_check(model, loss_fn, batch, [1e-3, 1e-2], eval_mode=False)
    minibatch_decomposition(model, loss_fn, (batch[0][:16], batch[1][:16]), batch, 0.05, k=2,
                            eval_mode=False)

    after = _state(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and model[1].training and model[3].training and not model[5].training
    state = optimizer.state_dict()
    for index, entry in optimizer_state["base_optimizer"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, state["base_optimizer"]["state"][index][key])
