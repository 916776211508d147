"""Paillier's headroom on a running federation: refused after discovery, before training.

A real federation's example counts (the clients' aggregation weights) are known only when
the nodes announce them in discovery; the coordinator then refuses a
``secure_aggregation.max_total_weight`` that the largest round could overflow, before any
client trains or encrypts (:func:`fedai.schemes.weight_problems`). ``fedai simulate``
refuses the same config before it starts (``tests/unit/crypto/test_crypto_paillier.py``);
this runs the coordinator without that pre-check, as ``flwr run`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from clients.app import app as client_app
from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.errors import ConfigError
from fedai.federation import keys
from fedai.federation.inprocess import run_inprocess
from server.app import build_server_app

pytestmark = pytest.mark.integration


def test_the_coordinator_refuses_a_headroom_the_discovered_clients_overflow(
    tmp_path: Path,
) -> None:
    # Arrange: 4 digits clients of ~360 training examples, 3 a round, headroom for 1,000
    create_keys(tmp_path, scheme="paillier", key_bits=2048)
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 1, "num_clients": 4, "clients_per_round": 3},
            "model": {"name": "logreg"},
            "secure_aggregation": {
                "scheme": "paillier",
                "key_dir": str(tmp_path),
                "max_total_weight": 1000,
            },
        }
    )
    sent: list[str] = []

    def tap(direction: str, message: Message) -> None:
        if direction == "send":
            sent.append(message.metadata.message_type)

    # Act / Assert: the run stops with the setting named; only discovery was sent
    with pytest.raises(ConfigError, match=r"max_total_weight must be >= 1\d\d\d, .* got 1000"):
        run_inprocess(build_server_app(cfg), client_app, num_supernodes=4, tap=tap)
    assert sent == [keys.MSG_QUERY] * 4
