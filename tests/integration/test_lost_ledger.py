"""A lost client ledger never resets that client's epsilon, end to end.

The audit's scenario: a DP run (``fedai simulate``, simulated nodes keep their ledgers in
``client-state/`` under the results directory) dies in round 5; one client's
``ledger-3.json`` is deleted; the same command resumes with ``--resume``. Before, client 3
started again from an empty ledger, trained on, and its reported epsilon fell from the
checkpoint's figure to a one-round figure. Now:

* the node refuses to train, naming the client and the ledger file: from its own
  high-water mark (``ledger-3.mark``) when only the ledger went, from the coordinator's
  checkpointed view (sent in the train message) when the mark went too;
* no reported epsilon is ever below Google dp-accounting's epsilon of the events each
  client really ran (its surviving ledger; for client 3, a copy taken before the loss);
* a node that ignores the coordinator's view and trains from zero has its report, which
  falls below the view, recorded as a failure of that client: never kept, never averaged
  in, and the client is not sampled again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.app import app as honest
from clients.privacy import LEDGER_MARK_FILE, STATE_LEDGER
from fedai.checkpoint import Checkpoint
from fedai.cli import main as cli_main
from fedai.commands.simulate import CLIENT_STATE_DIR, simulate
from fedai.config import ExperimentConfig
from fedai.federation import keys
from fedai.federation.inprocess import run_inprocess
from fedai.privacy.ledger import LedgerEntry
from server.app import build_server_app
from server.rounds import RunOutcome
from tests.integration.test_resume import CrashError, crash_at, ledgers, rdp_epsilon

pytestmark = pytest.mark.integration

EXPERIMENT = """\
[experiment]
name = "lost-ledger"
rounds = 5
num_clients = 4
clients_per_round = 4

[data]
dataset = "breast_cancer"
partition = "iid"

[model]
name = "logreg"

[train]
local_epochs = 1
batch_size = 32
lr = 0.1

[privacy]
mode = "local"
noise_multiplier = 1.0
delta = 1e-5
"""


@pytest.mark.parametrize("lost", ["ledger", "ledger-and-mark"])
def test_a_deleted_ledger_makes_its_client_refuse_on_resume_and_no_epsilon_drops(
    tmp_path: Path, lost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: rounds 1-4 checkpointed; the coordinator dies as round 5's train goes out
    toml = tmp_path / "lost.toml"
    toml.write_text(EXPERIMENT, encoding="utf-8")
    cfg = ExperimentConfig.from_toml(toml)
    out = tmp_path / "run"
    with pytest.raises(CrashError):
        simulate(cfg, verbose=False, tap=crash_at("train", 5, "send"), out_dir=out)
    ckpt = Checkpoint.find(out)
    assert ckpt is not None
    assert ckpt.round == 4
    seen = dict(ckpt.privacy_reports["3"])
    ran: dict[str, list[LedgerEntry]] = {c: list(led.entries) for c, led in ledgers(out).items()}
    assert {c: len(e) for c, e in ran.items()} == {"0": 4, "1": 4, "2": 4, "3": 4}
    state = out / CLIENT_STATE_DIR
    (state / "ledger-3.json").unlink()
    if lost == "ledger-and-mark":
        (state / LEDGER_MARK_FILE.format(client_id="3")).unlink()
    capsys.readouterr()

    # Act: the same command, resumed
    code = cli_main(["simulate", "-q", "--config", str(toml), "--out", str(out), "--resume"])

    # Assert: client 3 refused round 5, naming itself and its ledger file
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    fifth = rounds[4]
    assert sorted(fifth["trained"]) == ["0", "1", "2"]
    reason = fifth["refused"]["3"]
    assert reason.startswith("client 3: ledger ledger-3.json ")
    assert "the ledger was lost or replaced; refusing to train from zero" in reason
    if lost == "ledger":  # the node's own high-water mark
        assert "is missing but its mark ledger-3.mark records 4" in reason
    else:  # the coordinator's checkpointed view, sent in the train message
        assert f"holds 0 charged round(s) of run {ckpt.run_id}" in reason
        assert f"checkpoint recorded 4 (epsilon {seen['epsilon']:.4g})" in reason
    assert results["clients"]["3"]["exhausted"] == reason  # not sampled again
    assert not (state / "ledger-3.json").exists()  # nothing trained, nothing charged from zero
    # ... the figures the checkpoint held for client 3 stand (never a fresh, lower one)
    assert fifth["privacy"]["clients"]["3"] == seen
    # ... and no epsilon below what ran: dp-accounting of each client's real events
    after = ledgers(out)
    for cid in ("0", "1", "2"):
        assert [e.round for e in after[cid].entries] == [1, 2, 3, 4, 5]
        ran[cid] = list(after[cid].entries)
    for record in rounds:
        for cid, reported in record["privacy"]["clients"].items():
            events = [list(e.event) for e in ran[cid] if e.round <= record["round"]]
            truth = rdp_epsilon(events, reported["delta"])
            assert reported["rounds_trained"] == len(events), (record["round"], cid)
            assert reported["epsilon"] >= truth * 0.99, (record["round"], cid)
            assert reported["epsilon"] == pytest.approx(truth, rel=0.01)
    assert (
        results["final"]["epsilon"]
        >= max(rdp_epsilon([list(e.event) for e in entries], 1e-5) for entries in ran.values())
        * 0.99
    )


def test_a_report_below_the_coordinators_view_fails_its_client_and_is_never_kept() -> None:
    # Arrange: node 1 ignores the coordinator's view of its ledger (an older agent) and
    # loses its ledger (Context.state) before round 3, so it trains round 3 from zero
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 4, "num_clients": 3, "clients_per_round": 3},
            "data": {"dataset": "breast_cancer", "partition": "iid"},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
            "privacy": {"mode": "local", "noise_multiplier": 1.0, "delta": 1e-5},
        }
    )
    forgetful = ClientApp()
    views: dict[int, set[tuple[Any, Any]]] = {}

    @forgetful.train()
    def _train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[keys.REC_CONFIG]
        round_ = int(str(config[keys.KEY_SERVER_ROUND]))
        views.setdefault(round_, set()).add(
            (config.get(keys.KEY_SEEN_CHARGES), config.get(keys.KEY_SEEN_EPSILON))
        )
        if str(context.node_config["partition-id"]) == "1":
            config.pop(keys.KEY_SEEN_CHARGES, None)
            config.pop(keys.KEY_SEEN_EPSILON, None)
            if round_ == 3:
                context.state.config_records.pop(STATE_LEDGER)
        return honest(msg, context)

    @forgetful.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return honest(msg, context)

    @forgetful.query()
    def _query(msg: Message, context: Context) -> Message:
        return honest(msg, context)

    outcomes: list[RunOutcome] = []
    nodes: list[dict[str, bool | int | float | str]] = [
        {"partition-id": i, "num-partitions": 3} for i in range(3)
    ]

    # Act
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append), forgetful, num_supernodes=3, node_configs=nodes
    )

    # Assert: every train message carried the coordinator's view (none in round 1)
    rounds = outcomes[0].summary.rounds
    assert views[1] == {(None, None)}
    assert {charges for charges, _ in views[2]} == {1}
    assert {charges for charges, _ in views[3]} == {2}
    # ... client 1's fresh report (1 round, a lower epsilon) failed it, with the reason
    assert "1" in rounds[1].trained
    assert sorted(rounds[2].trained) == ["0", "2"]  # not averaged in
    failure = rounds[2].failures["1"]
    assert failure.startswith(
        "LedgerContinuityError: client 1: privacy report fell below the coordinator's view "
        "(epsilon "
    )
    assert "1 round(s) trained, below its earlier 2" in failure
    assert "1 charged round(s) of this run, below the 3 seen" in failure
    # ... its earlier figures stand in every later view, and it is not sampled again
    kept = rounds[1].privacy["clients"]["1"]
    assert kept["rounds_trained"] == 2
    assert rounds[2].privacy["clients"]["1"] == kept
    assert rounds[3].privacy["clients"]["1"] == kept
    assert "1" not in rounds[3].sampled
    assert outcomes[0].summary.clients["1"]["exhausted"] == failure.split(": ", 1)[1]
