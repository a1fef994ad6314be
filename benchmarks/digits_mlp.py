"""The float64 digits MLP that ``seed_validity.py`` and the analysis tests measure.

scikit-learn's 8x8 digits with pixels scaled to [0, 1], and an MLP 64-32-10 trained until the
training loss is below a target by one of three recipes: full-batch Adam (lr 0.01, the tests'
network), full-batch gradient descent (lr 0.5) or mini-batch SGD (batches of 32 drawn without
replacement, lr 0.1). Kept in one module so that the numbers the benchmark prints and the ones
the tests assert come from the same networks.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn


def scaled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as float64 inputs (N, 64) in [0, 1] and int64 labels (N,)."""
    inputs, labels = load_digits(return_X_y=True)
    return torch.tensor(inputs / 16.0, dtype=torch.float64), torch.tensor(labels)


#: recipe -> (optimizer class, learning rate, batch size; None for the full batch)
RECIPES = {
    "adam": (torch.optim.Adam, 1e-2, None),
    "gd": (torch.optim.SGD, 0.5, None),
    "sgd": (torch.optim.SGD, 0.1, 32),
}


def train_digits_mlp(
    data: tuple[torch.Tensor, torch.Tensor],
    activation: type[nn.Module] = nn.Tanh,
    seed: int = 0,
    *,
    recipe: str = "adam",
    target_loss: float = 0.1,
    max_steps: int = 5000,
) -> tuple[nn.Module, nn.Module, int]:
    """Train the MLP by ``recipe`` until its loss on ``data`` is below ``target_loss``.

    The loss on the whole of ``data`` is checked before every step, so every recipe stops at
    its first point below the target.

    Returns:
        ``(model, loss_fn, steps)``: the float64 model with no ``.grad`` left, its
        ``nn.CrossEntropyLoss`` and the number of optimizer steps taken (``max_steps`` if the
        target was not reached).
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    optimizer_class, lr, batch_size = RECIPES[recipe]
    inputs, labels = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), activation(), nn.Linear(32, 10)).double()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(0)
    for step in range(max_steps):
        with torch.no_grad():
            if loss_fn(model(inputs), labels).item() < target_loss:
                break
        if batch_size is None:
            chosen = slice(None)
        else:
            if order.numel() < batch_size:
                order = torch.randperm(inputs.shape[0], generator=generator)
            chosen, order = order[:batch_size], order[batch_size:]
        optimizer.zero_grad()
        loss_fn(model(inputs[chosen]), labels[chosen]).backward()
        optimizer.step()
    else:
        step = max_steps
    model.zero_grad(set_to_none=True)
    return model, loss_fn, step
