"""Local training and evaluation loops (plain, non-private).

DP-SGD training lives in :mod:`fedai.privacy`; this module is the non-private baseline
and the shared evaluation loop. Randomness (shuffling) comes from an injected
``torch.Generator`` so that a client's round is reproducible from the experiment seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedai.config import TrainSection


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Loss (mean cross-entropy) and accuracy on ``num_examples`` samples."""

    loss: float
    accuracy: float
    num_examples: int


def make_loader(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Return a DataLoader over float32 features and int64 labels."""
    ds = TensorDataset(
        torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    )
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


def optimizer_for(params: Iterable[nn.Parameter], train: TrainSection) -> torch.optim.Optimizer:
    """Build the optimizer named in ``train`` over ``params``."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )


def make_optimizer(model: nn.Module, train: TrainSection) -> torch.optim.Optimizer:
    """Build the optimizer named in ``train`` for ``model``."""
    return optimizer_for(model.parameters(), train)


def train_epochs(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    max_steps: int | None = None,
) -> tuple[float, int]:
    """Train ``model`` in place; return (mean training loss of the last epoch, steps taken).

    ``max_steps`` stops after that many optimizer steps (a straggler's partial work).
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    steps = 0
    last = 0.0
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:
                continue
            if max_steps is not None and steps >= max_steps:
                break
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        if count:
            last = total / count
        if max_steps is not None and steps >= max_steps:
            break
    return last, steps


def partial_steps(total_steps: int, work_fraction: float) -> int:
    """Steps a client doing ``work_fraction`` of ``total_steps`` takes: ceil, at least 1."""
    if not 0 < work_fraction <= 1:
        raise ValueError(f"work_fraction must be in (0, 1]; got {work_fraction!r}")
    return max(1, min(total_steps, math.ceil(work_fraction * total_steps)))


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    train: TrainSection,
    *,
    seed: int,
    proximal_mu: float = 0.0,
    work_fraction: float = 1.0,
) -> tuple[float, int]:
    """Non-private local training of ``model`` on (x, y); returns (loss, steps).

    ``proximal_mu > 0`` adds FedProx's proximal step
    (:func:`fedai.strategies.fedprox.add_proximal_term`); ``work_fraction < 1`` stops after
    that fraction of the ``local_epochs`` steps (a straggler).
    """
    from fedai.strategies.fedprox import add_proximal_term

    gen = torch.Generator().manual_seed(seed)
    loader = make_loader(x, y, batch_size=train.batch_size, shuffle=True, generator=gen)
    optimizer = add_proximal_term(make_optimizer(model, train), mu=proximal_mu)
    max_steps = None
    if work_fraction < 1:
        max_steps = partial_steps(len(loader) * train.local_epochs, work_fraction)
    return train_epochs(model, loader, optimizer, epochs=train.local_epochs, max_steps=max_steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512
) -> EvalResult:
    """Return mean cross-entropy and accuracy of ``model`` on (x, y)."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    # The batches a DataLoader without shuffling yields, as slices: its per-sample
    # indexing and collation cost more than the model on small test splits.
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    for lo in range(0, len(yt), batch_size):
        xb, yb = xt[lo : lo + batch_size], yt[lo : lo + batch_size]
        out = model(xb)
        loss += float(criterion(out, yb))
        correct += int((out.argmax(dim=1) == yb).sum())
    n = len(y)
    return EvalResult(loss / max(n, 1), correct / max(n, 1), n)


__all__ = [
    "EvalResult",
    "evaluate",
    "make_loader",
    "make_optimizer",
    "optimizer_for",
    "partial_steps",
    "train_epochs",
    "train_local",
]
