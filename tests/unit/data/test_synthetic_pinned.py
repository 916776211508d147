"""Synthetic(alpha, beta) numbers are pinned: any faster generator must give the same arrays.

The digests were computed by ``fedai.data.sources.synthetic`` and ``load_federated`` as of
commit 885625a (the many-clients benchmark's data among them), so a change in the order
of draws, a dtype, a size or the train/test split shows up here.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedai.config import ExperimentConfig
from fedai.data import load_federated, sources


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("kwargs", "sizes", "digest"),
    [
        (
            {"num_clients": 7, "alpha": 0.0, "beta": 0.0, "seed": 3},
            [2000, 50, 175, 67, 72, 85, 50],
            "f49f9dcc7ca2bd116478a6611148cda8616990194537b1ddcb8386f0551d6c5f",
        ),
        (
            {"num_clients": 5, "alpha": 0.5, "beta": 0.0, "dim": 20, "num_classes": 4, "seed": 11},
            [108, 878, 682, 69, 80],
            "fed086dfd513cc7f8c011aa1f9a4de834ca5dcafde4b7db2f462a533c6f2e36e",
        ),
        (
            {"num_clients": 4, "alpha": 0.0, "beta": 2.0, "seed": 1, "max_samples": 60},
            [60, 60, 60, 54],
            "e50779f613e948bb3a99f5e6e34d30c03f2c301ed112697acb0c7336cc50af8c",
        ),
    ],
)
def test_synthetic_arrays_are_the_pinned_ones(kwargs, sizes, digest):
    # Act
    xs, ys = sources.synthetic(**kwargs)
    # Assert
    assert [len(y) for y in ys] == sizes
    assert [x.dtype for x in xs] == [np.dtype(np.float32)] * len(xs)
    assert [y.dtype for y in ys] == [np.dtype(np.int64)] * len(ys)
    assert _digest(*xs, *ys) == digest


def test_thousand_client_federation_is_the_pinned_one():
    # Arrange: the many-clients benchmark's data (experiments/bench/many_clients.py)
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {
                "name": "pin",
                "rounds": 1,
                "num_clients": 1000,
                "clients_per_round": 10,
            },
            "data": {"dataset": "synthetic"},
            "model": {"name": "logreg"},
        }
    )
    # Act
    fed = load_federated(cfg)
    # Assert: a few clients one by one, then every array of every client
    pinned = {
        0: (96, 24, "69b14eccb68cb5601b5beb4de0d55bb51db8192ac7c645f34d2901eb01e93307"),
        1: (73, 18, "1e22533fe9ff4243dfc3be0f48ee8dd71264d76678a0882e7ca6297895041fbd"),
        499: (130, 32, "c826654967052d9db4361884675530b6c47a888e0b81a6155b9bb39acb151182"),
        998: (51, 13, "66ba77fa52f31502bb53a9919959ee2d9c75e7c60b642b8a31b2a3de68259be6"),
        999: (67, 17, "b71fa53b924701c83c4afbc2fed6d86becc1a0e3450535e2b64aeeac2ee372b7"),
    }
    for i, (n_train, n_test, digest) in pinned.items():
        c = fed[i]
        assert (len(c.y_train), len(c.y_test)) == (n_train, n_test)
        assert _digest(c.x_train, c.y_train, c.x_test, c.y_test) == digest
    every = [a for c in fed for a in (c.x_train, c.y_train, c.x_test, c.y_test)]
    assert _digest(*every) == "3cba7c58ff58417e498442d0f8f64800c1e9cb85ca6888a16536663e95dc9dde"
