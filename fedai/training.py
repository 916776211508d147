"""Local training and evaluation loops (plain, non-private).

DP-SGD training lives in :mod:`fedai.privacy`; this module is the non-private baseline
and the shared evaluation loop. Randomness (shuffling) comes from an injected
``torch.Generator`` so that a client's round is reproducible from the experiment seed.

Non-private SGD runs :class:`PlainSgd`, ``torch.optim.SGD``'s update without
``torch.optim``: every ``torch.optim`` optimiser's constructor, ``zero_grad`` and ``step``
go through ``torch._disable_dynamo``, which imports ``torch._dynamo`` (1.1-1.7 s here) the
first time any of them runs, in every simulation and on every node. Adam and DP-SGD
(Opacus wraps a ``torch.optim`` optimiser) keep ``torch.optim``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedai.config import TrainSection
from fedai.errors import ConfigError, DataError


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Loss (mean cross-entropy) and accuracy on ``num_examples`` samples."""

    loss: float
    accuracy: float
    num_examples: int


class Stepper(Protocol):
    """What :func:`train_epochs` needs of an optimiser (``torch.optim`` and :class:`PlainSgd`)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients."""

    def step(self) -> object:
        """Update the parameters from their gradients."""


class PlainSgd:
    """``torch.optim.SGD`` (no dampening, no Nesterov), optionally with FedProx's step.

    The same tensor operations in the same order as ``torch.optim.SGD``'s single-tensor
    path, the one torch takes for CPU parameters (``foreach`` kernels are for CUDA-like
    devices): ``g = grad + weight_decay * p``; with momentum ``buf = g`` on the first step,
    then ``buf = momentum * buf + g``, and ``g = buf``; ``p -= lr * g``. So the weights
    are bit-identical to ``torch.optim.SGD``'s (``tests/unit/test_plain_sgd.py`` compares
    them over many steps for every option fedai exposes), without importing
    ``torch._dynamo`` (see the module docstring).

    ``proximal_mu > 0`` first adds FedProx's ``mu (w - w0)`` to each gradient, ``w0`` the
    parameters at construction, exactly as :func:`fedai.strategies.fedprox.add_proximal_term`'s
    step pre-hook does on a ``torch.optim`` optimiser.

    Args:
        params: The parameters to train (materialised once; their order is kept).
        lr: Learning rate, >= 0.
        momentum: Momentum factor, >= 0.
        weight_decay: L2 penalty, >= 0.
        proximal_mu: FedProx's mu, finite and >= 0.

    Raises:
        ConfigError: lr, momentum or weight decay negative or NaN (``torch.optim.SGD``
            refuses the same values, with a ValueError; ConfigError is one).
        InvalidPrivacyParameterError: ``proximal_mu`` is negative or not finite.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        *,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        proximal_mu: float = 0.0,
    ) -> None:
        from fedai.strategies.fedprox import check_proximal_mu

        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ConfigError(f"{name} must be >= 0; got {value}")
        self._mu = check_proximal_mu(proximal_mu)
        self._params = list(params)
        self._lr, self._momentum, self._weight_decay = lr, momentum, weight_decay
        self._buffers: list[torch.Tensor | None] = [None] * len(self._params)
        self._anchors = [p.detach().clone() for p in self._params] if self._mu else []

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients as ``torch.optim.Optimizer.zero_grad`` does."""
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step (after FedProx's proximal term, if any) on every parameter with a grad."""
        if self._mu:
            for p, w0 in zip(self._params, self._anchors, strict=True):
                if p.grad is not None:
                    p.grad.add_(p.detach() - w0, alpha=self._mu)
        lr, momentum, weight_decay = self._lr, self._momentum, self._weight_decay
        for i, p in enumerate(self._params):
            if p.grad is None:
                continue
            grad = p.grad
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            if momentum != 0:
                buf = self._buffers[i]
                if buf is None:
                    buf = grad.detach().clone()
                    self._buffers[i] = buf
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - 0.0)  # torch: 1 - dampening
                grad = buf
            p.add_(grad, alpha=-lr)


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


class ShuffledBatches:
    """The batches of a shuffling ``DataLoader`` over (x, y), by slicing; one epoch per ``iter``.

    ``make_loader(x, y, batch_size=b, shuffle=True, generator=g)`` indexes a
    ``TensorDataset`` sample by sample and collates; this takes the same samples with one
    indexing per batch. Each epoch consumes ``generator`` exactly as the single-process
    ``DataLoader`` does (torch 2.13): one int64 draw for the iterator's base seed, the
    ``RandomSampler``'s ``randperm(n)``, and, once the epoch is exhausted, the sampler's
    trailing ``randperm(n)`` (its remainder slice, empty here). So every batch, in every
    epoch, equals the ``DataLoader``'s (``tests/unit/test_plain_sgd.py`` compares them,
    and the generator's state after each epoch, so a torch that changes this fails there).

    Raises:
        DataError: no samples (a shuffling ``DataLoader`` refuses them too).
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, *, batch_size: int, generator: torch.Generator
    ) -> None:
        if len(y) == 0:
            raise DataError("training data must hold at least one sample; got 0")
        self._x = torch.as_tensor(x, dtype=torch.float32)
        self._y = torch.as_tensor(y, dtype=torch.int64)
        self._batch_size = batch_size
        self._generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self._y) / self._batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, gen = len(self._y), self._generator
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the iterator's base seed
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, self._batch_size):
            idx = order[lo : lo + self._batch_size]
            yield self._x[idx], self._y[idx]
        torch.randperm(n, generator=gen)  # RandomSampler's trailing (empty) remainder


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
    loader: Iterable[tuple[torch.Tensor, ...]],
    optimizer: Stepper,
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
    that fraction of the ``local_epochs`` steps (a straggler). SGD runs
    :class:`PlainSgd` (the same weights as ``torch.optim.SGD``), Adam ``torch.optim``.
    """
    gen = torch.Generator().manual_seed(seed)
    loader = ShuffledBatches(x, y, batch_size=train.batch_size, generator=gen)
    optimizer: Stepper
    if train.optimizer == "sgd":
        optimizer = PlainSgd(
            model.parameters(),
            lr=train.lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            proximal_mu=proximal_mu,
        )
    else:
        from fedai.strategies.fedprox import add_proximal_term

        optimizer = add_proximal_term(make_optimizer(model, train), mu=proximal_mu)
    max_steps = None
    if work_fraction < 1:
        max_steps = partial_steps(len(loader) * train.local_epochs, work_fraction)
    return train_epochs(model, loader, optimizer, epochs=train.local_epochs, max_steps=max_steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 512,
    loss_bound: float | None = None,
) -> EvalResult:
    """Return mean cross-entropy and accuracy of ``model`` on (x, y).

    ``loss_bound`` clips each example's loss to ``[0, loss_bound]`` before summing (the
    bounded sensitivity a noisy release needs, :mod:`fedai.release`).
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum" if loss_bound is None else "none")
    loss, correct = 0.0, 0
    # The batches a DataLoader without shuffling yields, as slices: its per-sample
    # indexing and collation cost more than the model on small test splits.
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    for lo in range(0, len(yt), batch_size):
        xb, yb = xt[lo : lo + batch_size], yt[lo : lo + batch_size]
        out = model(xb)
        per = criterion(out, yb)
        loss += float(per if loss_bound is None else per.clamp(0.0, loss_bound).sum())
        correct += int((out.argmax(dim=1) == yb).sum())
    n = len(y)
    return EvalResult(loss / max(n, 1), correct / max(n, 1), n)


__all__ = [
    "EvalResult",
    "PlainSgd",
    "ShuffledBatches",
    "Stepper",
    "evaluate",
    "make_loader",
    "make_optimizer",
    "optimizer_for",
    "partial_steps",
    "train_epochs",
    "train_local",
]
