"""The node decides: a coordinator's request may narrow a node's policy, never widen it.

Real ServerApp and ClientApp in-process; the nodes' own settings come from their
``node_config`` as on a real SuperNode. Every test taps what the coordinator receives.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from clients.app import app as client_app
from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.federation import keys
from fedai.federation.inprocess import run_inprocess
from fedai.federation.records import record_to_payload
from fedai.privacy.ledger import PrivacyLedger
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration

NUM_CLIENTS = 3


class Tap:
    """Every message the coordinator receives, flattened to text and arrays."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, list[np.ndarray]]] = []  # (type, text, arrays)

    def __call__(self, direction: str, msg: Message) -> None:
        if direction != "receive":
            return
        text = repr(msg.error) if msg.has_error() else ""
        arrays: list[np.ndarray] = []
        if msg.has_content():
            text += repr({k: dict(v) for k, v in msg.content.config_records.items()})
            text += repr({k: dict(v) for k, v in msg.content.metric_records.items()})
            for record in msg.content.array_records.values():
                arrays.extend(record_to_payload(record))
        self.received.append((msg.metadata.message_type, text, arrays))

    def text(self) -> str:
        return "\n".join(t for _, t, _ in self.received)


def config(**sections: dict[str, Any]) -> ExperimentConfig:
    base: dict[str, Any] = {
        "experiment": {"rounds": 2, "num_clients": NUM_CLIENTS, "clients_per_round": NUM_CLIENTS},
        "train": {"local_epochs": 1},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return ExperimentConfig.from_mapping(base)


def nodes(**extra: dict[str, Any]) -> list[dict[str, bool | int | float | str]]:
    """Simulation partitions; ``extra[str(i)]`` adds keys to node i's config."""
    return [
        {"partition-id": i, "num-partitions": NUM_CLIENTS, **extra.get(str(i), {})}
        for i in range(NUM_CLIENTS)
    ]


def run(cfg: ExperimentConfig, node_configs: list[Any], tap: Tap | None = None) -> RunOutcome:
    outcomes: list[RunOutcome] = []
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        client_app,
        num_supernodes=NUM_CLIENTS,
        node_configs=node_configs,
        tap=tap,
    )
    assert len(outcomes) == 1
    return outcomes[0]


# ---------------------------------------------------------------- encryption
def test_a_node_with_keys_refuses_plaintext_and_sends_nothing_in_the_clear(
    tmp_path: Path,
) -> None:
    # Arrange: node 1 holds CKKS keys; the coordinator asks for scheme "none"
    create_keys(tmp_path / "keys")
    tap = Tap()

    # Act
    outcome = run(config(), nodes(**{"1": {"key-dir": str(tmp_path / "keys")}}), tap)

    # Assert: node 1 refused every round with the reason; the others trained in the clear
    first = outcome.summary.rounds[0]
    assert "secure_aggregation.scheme must be 'ckks' (node policy)" in first.refused["1"]
    for r in outcome.summary.rounds:
        assert "1" not in r.trained
        assert sorted(r.trained) == ["0", "2"]
    # node 1 sent no arrays at all: train replies with arrays came from the others only
    with_arrays = [t for t, _, arrays in tap.received if t == keys.MSG_TRAIN and arrays]
    assert len(with_arrays) == 2 * len(outcome.summary.rounds)


# ---------------------------------------------------------------- privacy
def _dp(sigma: float, **privacy: Any) -> ExperimentConfig:
    return config(privacy={"mode": "local", "noise_multiplier": sigma, **privacy})


def _ledger_bytes(state: Path) -> bytes:
    return (state / "ledger-1.json").read_bytes()


@pytest.mark.parametrize(
    ("policy", "request_", "needle"),
    [
        ({"min-noise-multiplier": 1.5}, {"sigma": 1.0}, "noise_multiplier must be >= 1.5"),
        (
            {"max-budget-epsilon": 50.0},
            {"sigma": 2.0, "budget_epsilon": 80.0},
            "budget_epsilon must be <= 50",
        ),
        ({"max-epsilon-per-round": 0.01}, {"sigma": 2.0}, "epsilon per round must be <= 0.01"),
    ],
)
def test_a_request_beyond_the_privacy_policy_is_refused_and_the_ledger_unchanged(
    tmp_path: Path, policy: dict[str, Any], request_: dict[str, Any], needle: str
) -> None:
    # Arrange: a first run at sigma 2 and budget 40 writes node 1's ledger (within the
    # first two policies; the tiny per-round cap refuses it too, so no ledger is written)
    state = tmp_path / "state"
    node = {"1": {"state-dir": str(state), **policy}}
    run(_dp(2.0, budget_epsilon=40.0), nodes(**node))
    before = _ledger_bytes(state) if (state / "ledger-1.json").exists() else None

    # Act: the coordinator asks for more than node 1 allows
    sigma = request_.pop("sigma")
    outcome = run(_dp(sigma, **request_), nodes(**node))

    # Assert
    first = outcome.summary.rounds[0]
    assert needle in first.refused["1"]
    assert all("1" not in r.trained for r in outcome.summary.rounds)
    after = _ledger_bytes(state) if (state / "ledger-1.json").exists() else None
    assert after == before


def test_a_larger_num_sampled_than_the_policy_allows_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = config(
        privacy={
            "mode": "local+user",
            "noise_multiplier": 1.0,
            "user_noise_multiplier": 1.0,
            "user_clipping_norm": 1.0,
        }
    )

    outcome = run(cfg, nodes(**{"1": {"state-dir": str(state), "max-num-sampled": 2}}))

    assert (
        "num-sampled must be <= 2 (node policy); the coordinator asked for 3"
        in (outcome.summary.rounds[0].refused["1"])
    )
    assert not (state / "ledger-1.json").exists()


def test_a_budget_cap_applies_when_the_coordinator_names_none(tmp_path: Path) -> None:
    state = tmp_path / "state"

    run(_dp(1.0), nodes(**{"1": {"state-dir": str(state), "max-budget-epsilon": 3.0}}))

    assert PrivacyLedger.load(state / "ledger-1.json").budget_epsilon == 3.0


# ---------------------------------------------------------------- data and files
def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _numeric_csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [",".join(f"{v:.3f}" for v in rng.normal(size=8)) + f",{i % 3}" for i in range(n)]
    return _csv(path, ",".join(f"f{i}" for i in range(8)) + ",label", rows)


def _with_csv(cfg: ExperimentConfig, path: Path) -> ExperimentConfig:
    """The coordinator's data source for the simulated nodes: a CSV with 8 features."""
    return cfg.replace(data=replace(cfg.data, dataset=f"csv:{path}", partition="iid"))


def test_a_node_with_its_own_data_needs_a_durable_ledger_for_dp(tmp_path: Path) -> None:
    shared = _numeric_csv(tmp_path / "shared.csv", 300, seed=1)
    own = _numeric_csv(tmp_path / "own.csv", 80, seed=2)

    outcome = run(_with_csv(_dp(1.0), shared), nodes(**{"1": {"data-path": str(own)}}))

    assert "must set 'state-dir'" in outcome.summary.rounds[0].refused["1"]


def test_replies_never_quote_a_nodes_file_or_open_coordinator_paths(tmp_path: Path) -> None:
    # Arrange: node 1's own file holds private text; the coordinator's key directory is a
    # valid key set whose client bundle is secret bytes (a node must never open it)
    own = _csv(
        tmp_path / "own.csv",
        "name,ssn_secret_column,label",
        ["alice_private,123-45-6789,1", "bob_private,987-65-4321,0"],
    )
    shared = _numeric_csv(tmp_path / "shared.csv", 300, seed=1)
    create_keys(tmp_path / "keys")
    coordinator_keys = tmp_path / "coordinator-keys"
    shutil.copytree(tmp_path / "keys", coordinator_keys)
    (coordinator_keys / "client.bundle").write_bytes(b"TOPSECRETBYTES" * 4)
    cfg = _with_csv(
        config(secure_aggregation={"scheme": "ckks", "key_dir": str(coordinator_keys)}), shared
    )
    keyed = {"key-dir": str(tmp_path / "keys")}
    tap = Tap()

    # Act: node 1's file is unusable; then node 1 has a good file but no key-dir
    run(_with_csv(config(), shared), nodes(**{"1": {"data-path": str(own)}}), tap)
    own_ok = _numeric_csv(tmp_path / "own-ok.csv", 80, seed=3)
    outcome = run(cfg, nodes(**{"0": keyed, "1": {"data-path": str(own_ok)}, "2": keyed}), tap)

    # Assert: nothing the coordinator received quotes the file, its cells or the key bytes
    seen = tap.text()
    for secret in ("ssn_secret_column", "alice_private", "123-45", "TOPSECRET", str(own)):
        assert secret not in seen
    assert "discovery failed: DataError (details in the node's log)" in seen
    # node 1 has no key-dir of its own: it refuses to open the coordinator's
    assert "train failed: ConfigError" in outcome.summary.rounds[0].failures["1"]
    assert sorted(outcome.summary.rounds[0].trained) == ["0", "2"]
