"""The ClientApp refuses a train message without a run id or a round, in every privacy mode.

Without a run id a client cannot claim a round once: the same round, sent again, would be
trained and charged again. Nothing trains, nothing is written to the node's state dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.app import train
from fedai.config import ExperimentConfig
from fedai.federation import keys
from fedai.federation.flower_internals import SUPERLINK_NODE_ID, set_message_id, set_task_identity

MODES: dict[str, dict[str, Any]] = {
    "none": {"mode": "none"},
    "local": {"mode": "local", "noise_multiplier": 1.0, "delta": 1e-5},
    "local+user": {
        "mode": "local+user",
        "noise_multiplier": 1.0,
        "delta": 1e-5,
        "user_noise_multiplier": 1.0,
        "user_clipping_norm": 1.0,
    },
}


def cfg(mode: str) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 2, "num_clients": 2, "clients_per_round": 2},
            "data": {"dataset": "breast_cancer"},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 32},
            "privacy": MODES[mode],
        }
    )


def message(config: dict[str, Any]) -> Message:
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID)
    records = RecordDict({keys.REC_ARRAYS: ArrayRecord(), keys.REC_CONFIG: ConfigRecord(config)})
    msg = Message(records, dst_node_id=100, message_type=keys.MSG_TRAIN)
    set_message_id(msg, "m1")  # as if the SuperLink had delivered it
    return msg


def context(state: Path) -> Context:
    return Context(
        run_id=1,
        node_id=100,
        node_config={"partition-id": 0, "num-partitions": 2, "state-dir": str(state)},
        state=RecordDict(),
        run_config={},
    )


def full(mode: str) -> dict[str, Any]:
    return {
        keys.KEY_SERVER_ROUND: 1,
        keys.KEY_EXPERIMENT: cfg(mode).to_json(),
        keys.KEY_INIT: True,
        keys.KEY_TOTAL_WEIGHT: 0.0,
        keys.KEY_RUN_ID: "0123abcd",
        keys.KEY_RUN_SESSION: "s1",
        keys.KEY_RESUMED_AFTER: 0,
        keys.KEY_NUM_SAMPLED: 2,
    }


def status_of(reply: Message) -> tuple[str, str]:
    rec = reply.content.config_records[keys.REC_FEDAI]
    return str(rec[keys.KEY_STATUS]), str(rec.get(keys.KEY_REASON, ""))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("missing", [keys.KEY_RUN_ID, keys.KEY_SERVER_ROUND])
def test_a_train_message_without_run_id_or_round_is_refused(
    tmp_path: Path, mode: str, missing: str
) -> None:
    # Arrange
    config = full(mode)
    del config[missing]
    # Act
    reply = train(message(config), context(tmp_path))
    # Assert: a protocol error (the type only goes to the coordinator), nothing spent
    assert status_of(reply) == (
        keys.STATUS_FAILED,
        "train failed: ProtocolError (details in the node's log)",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["none", "local"])
def test_the_same_message_with_both_trains(tmp_path: Path, mode: str) -> None:
    # The positive control: the message above is otherwise complete.
    reply = train(message(full(mode)), context(tmp_path))
    assert status_of(reply) == (keys.STATUS_OK, "")
    assert (tmp_path / "ledger-0.json").exists() == (mode != "none")
