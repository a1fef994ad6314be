"""The float64 digits MLP that ``seed_validity.py`` and the analysis tests measure.

scikit-learn's 8x8 digits with pixels scaled to [0, 1], and an MLP 64-32-10 trained by full-batch
Adam (lr 0.01) until the training loss is below a target. Kept in one module so that the numbers
the benchmark prints and the ones the tests assert come from the same network.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn


def scaled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as float64 inputs (N, 64) in [0, 1] and int64 labels (N,)."""
    inputs, labels = load_digits(return_X_y=True)
    return torch.tensor(inputs / 16.0, dtype=torch.float64), torch.tensor(labels)


def train_digits_mlp(
    data: tuple[torch.Tensor, torch.Tensor],
    activation: type[nn.Module] = nn.Tanh,
    seed: int = 0,
    *,
    target_loss: float = 0.1,
    max_steps: int = 5000,
) -> tuple[nn.Module, nn.Module, int]:
    """Train the MLP by full-batch Adam until its loss on ``data`` is below ``target_loss``.

    Returns:
        ``(model, loss_fn, steps)``: the float64 model with no ``.grad`` left, its
        ``nn.CrossEntropyLoss`` and the number of Adam steps taken (``max_steps`` if the target
        was not reached).
    """
    inputs, labels = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), activation(), nn.Linear(32, 10)).double()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(max_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), labels)
        if loss.item() < target_loss:
            break
        loss.backward()
        optimizer.step()
    else:
        step = max_steps
    model.zero_grad(set_to_none=True)
    return model, loss_fn, step
