"""A coordinator's numbers are checked by the client before it trains, and a client's
privacy report by the coordinator before it is kept (both are untrusted input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from fedai.errors import ProtocolError
from fedai.federation import keys
from server.rounds import _parse_report
from tests.integration.test_node_policy import config, nodes, run

pytestmark = pytest.mark.integration

GOOD = {
    "epsilon": 1.5,
    "delta": 1e-5,
    "accountant": "rdp",
    "noise_multiplier": 1.1,
    "rounds_trained": 2,
    "rounds_lost": 0,
    "budget_epsilon": None,
    "exhausted": False,
    "history": [[1.1, 0.1, 10], [1.1, 0.1, 10]],
}


def test_a_well_formed_report_is_kept_field_by_field() -> None:
    assert _parse_report("c", json.dumps(GOOD)) == GOOD


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"epsilon": 1.0, "delta": NaN}', "finite numbers"),
        ('{"epsilon": 1.0, "history": [[1e999, 0.1, 3]]}', "history sigma"),
        ('{"epsilon": Infinity}', "finite numbers"),
        ('{"epsilon": 1.0, "delta": 2.0}', r"delta must be in \[0, 1\]"),
        ('{"epsilon": -1}', "epsilon must be in"),
        ('{"epsilon": 1.0, "history": [[1.0, 0.1, 2.5]]}', "history steps"),
        ('{"epsilon": 1.0, "history": [[1.0, 0.1]]}', "history events"),
        ('{"epsilon": 1.0, "rounds_trained": true}', "rounds_trained"),
        ('{"epsilon": 1.0, "exhausted": "no"}', "exhausted"),
        ("[1, 2]", "JSON object"),
        ("{" * 100_000, "JSON"),
    ],
)
def test_a_malformed_report_is_a_protocol_error(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        _parse_report("c", text)


def test_a_client_with_a_nan_report_costs_only_its_reply(tmp_path: Path) -> None:
    # Arrange: client 1 answers every train message with a NaN delta in its report
    from flwr.clientapp import ClientApp

    from clients.app import app as honest

    cfg = config(privacy={"mode": "local", "noise_multiplier": 1.0})
    liar = ClientApp()

    @liar.train()
    def _train(msg: Message, context: Any) -> Message:
        reply = honest(msg, context)
        if str(context.node_config.get("partition-id")) == "1" and reply.has_content():
            rec = reply.content.config_records[keys.REC_FEDAI]
            rec[keys.KEY_PRIVACY] = '{"epsilon": 1.0, "delta": NaN}'
        return reply

    @liar.evaluate()
    def _evaluate(msg: Message, context: Any) -> Message:
        return honest(msg, context)

    @liar.query()
    def _query(msg: Message, context: Any) -> Message:
        return honest(msg, context)

    # Act
    outcome = run_with(cfg, liar)

    # Assert: the run finished every round without client 1's contribution
    rounds = outcome.summary.rounds
    assert [r.status for r in rounds] == ["ok", "ok"]
    for r in rounds:
        assert "1" not in r.trained
        assert "finite numbers" in r.failures["1"]


def run_with(cfg: Any, app: Any) -> Any:
    from fedai.federation.inprocess import run_inprocess
    from server.app import build_server_app

    outcomes: list[Any] = []
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        app,
        num_supernodes=len(nodes()),
        node_configs=nodes(),
    )
    return outcomes[0]


@pytest.mark.parametrize("bad_round", [0, -3, 2.5, "two"])
def test_a_bad_round_number_is_refused_before_training(tmp_path: Path, bad_round: Any) -> None:
    # Arrange: a coordinator that sends round numbers a client must not account
    state = tmp_path / "state"
    cfg = config(privacy={"mode": "local", "noise_multiplier": 1.0})

    def tamper(direction: str, msg: Message) -> None:
        if direction == "send" and msg.metadata.message_type == "train":
            msg.content.config_records[keys.REC_CONFIG][keys.KEY_SERVER_ROUND] = bad_round

    # Act
    outcome = run(cfg, nodes(**{"1": {"state-dir": str(state)}}), tap=tamper)  # type: ignore[arg-type]

    # Assert: every train failed with the type only; node 1 trained nothing, spent nothing
    for r in outcome.summary.rounds:
        assert r.trained == []
        assert r.failures["1"].startswith("train failed: ProtocolError")
    assert not (state / "ledger-1.json").exists()
