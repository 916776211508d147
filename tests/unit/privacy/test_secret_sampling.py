"""DP-SGD batches are secret: nobody rebuilds them from public information.

Amplification by subsampling assumes the Poisson batches are secret. Before this was fixed a
client's loader was seeded with ``crc32(seed/client/round)`` and Opacus drew its batches
from it, so a coordinator that knows the config could rebuild every batch. Here the real
client path (:func:`clients.privacy.train_private`) is run while the Poisson sampler's
output is recorded, then the batches are rebuilt the way an attacker would (Opacus'
``DPDataLoader`` with a generator seeded from the public seed, client id and round, and
from the experiment seed alone): none of them matches, and two runs of the same round with
the same config draw different batches.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from clients.privacy import train_private
from fedai.config import ExperimentConfig
from fedai.data import ClientData
from fedai.models import ModelSpec, build_model
from fedai.privacy.ledger import PrivacyLedger
from fedai.training import make_loader

SEED, CLIENT, ROUND = 3, "2", 4
N, BATCH = 200, 20


def _cfg(mode: str) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {
            "experiment": {"seed": SEED},
            "train": {"batch_size": BATCH, "local_epochs": 1},
            "privacy": {"mode": "local", "noise_multiplier": 1.0, "grad_sample_mode": mode},
        }
    )


def _data() -> ClientData:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, N)
    return ClientData(CLIENT, x, y, x[:10], y[:10], 10)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Every batch Opacus' Poisson sampler yields, in order."""
    batches: list[list[int]] = []
    original = UniformWithReplacementSampler.__iter__

    def spy(self: UniformWithReplacementSampler) -> Iterator[list[int]]:
        for batch in original(self):
            batches.append(sorted(int(i) for i in batch))
            yield batch

    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", spy)
    return batches


def _client_round(mode: str, recorded: list[list[int]]) -> list[list[int]]:
    recorded.clear()
    cfg = _cfg(mode)
    model = build_model(ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10), seed=SEED)
    ledger = PrivacyLedger(client_id=CLIENT, delta=1e-5)
    train_private(model, _data(), cfg, ledger=ledger, round_=ROUND)
    return list(recorded)


def _rebuilt(seed: int, recorded: list[list[int]]) -> list[list[int]]:
    """Batches an attacker gets from a generator seeded with public information."""
    data = _data()
    loader = make_loader(
        data.x_train,
        data.y_train,
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    recorded.clear()
    for _ in DPDataLoader.from_data_loader(loader):
        pass
    return list(recorded)


@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_public_information_does_not_rebuild_a_clients_batches(
    mode: str, recorded: list[list[int]]
) -> None:
    # Act
    real = _client_round(mode, recorded)
    public_seeds = [
        zlib.crc32(f"{SEED}/{CLIENT}/{ROUND}".encode()),  # the pre-issue-10 derivation
        SEED,
        ROUND,
        int(CLIENT),
        0,
    ]
    guesses = [_rebuilt(s, recorded) for s in public_seeds]

    # Assert: the recorder works (the attacker's own rebuild is reproducible) ...
    assert len(real) == N // BATCH
    assert _rebuilt(public_seeds[0], recorded) == guesses[0]
    # ... and no public seed reproduces the client's batches
    for guess in guesses:
        assert guess != real
        matches = sum(a == b for a, b in zip(real, guess, strict=False))
        assert matches < len(real) // 2


@pytest.mark.parametrize("mode", ["hooks", "fused"])
def test_the_same_round_twice_draws_different_batches(mode: str, recorded: list[list[int]]) -> None:
    first = _client_round(mode, recorded)
    second = _client_round(mode, recorded)

    assert first != second
