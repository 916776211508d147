"""Local DP-SGD on a running federation: the coordinator's ledger, budgets, restarts.

Acceptance checks, end to end through the real ClientApp and ServerApp
(in-process runner, breast_cancer, 4 clients, a few rounds):

* every epsilon a client reports, after every round, equals within 1% what Google's
  ``dp-accounting`` (RDP) computes from that client's own reported history, composed here
  directly from ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` (never through fedai);
* budgets: clients refuse the round that would pass ``budget_epsilon``, are recorded and
  never sampled again, never exceed the budget, and the run ends with a stop reason once
  nobody can train while the others carry on meanwhile;
* a real process restart continues every client's on-disk epsilon; a corrupt ledger file
  fails only that client, with an error naming the file;
* bad privacy configs fail before any training (CLI exit 2); a ledger already past its
  budget makes that client refuse in round 1 with the reason;
* ``local+user`` reports, after every round, user-level epsilons (against outsiders, with
  participation known, and the coordinator's view of each update) that dp-accounting
  reproduces from the per-round history written to ``results.json``, for Poisson and for
  fixed-size client sampling.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import (
    GaussianDpEvent,
    NeighboringRelation,
    PoissonSampledDpEvent,
    SampledWithoutReplacementDpEvent,
)
from dp_accounting.rdp import RdpAccountant

from clients.app import app as client_app
from fedai.cli import main as cli_main
from fedai.commands.simulate import save_simulation, simulate
from fedai.config import ExperimentConfig
from fedai.federation.inprocess import run_inprocess
from fedai.privacy.ledger import PrivacyLedger
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DP_DIGITS = ROOT / "experiments" / "dp_digits.toml"
NUM_CLIENTS = 4
DELTA = 1e-5
CLIENT_IDS = [str(i) for i in range(NUM_CLIENTS)]
# breast_cancer, Dirichlet(0.5), 4 clients -> 133, 168, 23 and 131 training examples: with
# batch 32 the sample rates are 0.2, 1/6, 1.0 and 0.2, so the clients spend unequally.


# ---------------------------------------------------------------------- helpers
def small(**sections: dict[str, Any]) -> ExperimentConfig:
    """4 clients, 3 rounds of local DP-SGD (fixed sigma) on breast_cancer."""
    base: dict[str, dict[str, Any]] = {
        "experiment": {"rounds": 3, "num_clients": NUM_CLIENTS, "clients_per_round": 4},
        "data": {"dataset": "breast_cancer", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "privacy": {"mode": "local", "noise_multiplier": 1.0, "delta": DELTA},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return ExperimentConfig.from_mapping(base)


def rdp_epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """Google dp-accounting's RDP epsilon of ``[sigma, q, steps]`` entries (not fedai's)."""
    accountant = RdpAccountant()
    for sigma, q, steps in history:
        accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), int(steps))
    return float(accountant.get_epsilon(delta))


def node_configs(state_root: Path) -> list[dict[str, bool | int | float | str]]:
    """Simulation partitions with a real node's on-disk state dir and stable client id."""
    return [
        {
            "partition-id": i,
            "num-partitions": NUM_CLIENTS,
            "client-id": str(i),
            "state-dir": str(state_root / f"node-{i}"),
        }
        for i in range(NUM_CLIENTS)
    ]


def run_with_state(cfg: ExperimentConfig, state_root: Path) -> RunOutcome:
    outcomes: list[RunOutcome] = []
    server_app = build_server_app(cfg, sink=outcomes.append)
    run_inprocess(
        server_app,
        client_app,
        num_supernodes=NUM_CLIENTS,
        node_configs=node_configs(state_root),
    )
    return outcomes[0]


# A federation in its own process: coordinator and client agents start from nothing but
# the config and the nodes' state dirs, and print every round record as JSON. With a round
# offset k the agents see round r as round r + k: the coordinator carried on while the
# agents were down, as when a SuperNode restarts mid-run and the SuperLink does not.
RUN_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from flwr.clientapp import ClientApp
    from clients.app import app as client_app
    from fedai.config import ExperimentConfig
    from fedai.federation import keys
    from fedai.federation.inprocess import run_inprocess
    from server.app import build_server_app

    cfg = ExperimentConfig.from_json(sys.argv[2])
    nodes = json.loads(sys.argv[3])
    offset = int(sys.argv[4])
    agent = ClientApp()

    @agent.query()
    def query(msg, context):
        return client_app(msg, context)

    @agent.train()
    def train(msg, context):
        config = msg.content.config_records[keys.REC_CONFIG]
        config[keys.KEY_SERVER_ROUND] = int(config[keys.KEY_SERVER_ROUND]) + offset
        return client_app(msg, context)

    @agent.evaluate()
    def evaluate(msg, context):
        return client_app(msg, context)

    outcomes = []
    run_inprocess(build_server_app(cfg, sink=outcomes.append), agent,
                  num_supernodes=len(nodes), node_configs=nodes)
    print(json.dumps([r.to_dict() for r in outcomes[0].summary.rounds]))
""")


def run_in_new_process(
    cfg: ExperimentConfig, state_root: Path, script: Path, *, round_offset: int = 0
) -> list[dict[str, Any]]:
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(ROOT),
            cfg.to_json(),
            json.dumps(node_configs(state_root)),
            str(round_offset),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=ROOT,
    )
    rounds: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rounds


# ---------------------------------------------------------------------- a. the ledger
def test_every_reported_epsilon_equals_dp_accounting_of_its_own_history() -> None:
    # Arrange: 3 of 4 clients per round, so histories differ in length as well as in q
    cfg = small(experiment={"clients_per_round": 3})

    # Act
    rounds = simulate(cfg, verbose=False).summary.rounds

    # Assert
    assert [r.round for r in rounds] == [1, 2, 3]
    trained_so_far = dict.fromkeys(CLIENT_IDS, 0)
    for record in rounds:
        assert len(record.trained) == 3
        for cid in record.trained:
            trained_so_far[cid] += 1
        reports = record.privacy["clients"]
        assert set(reports) == {c for c, n in trained_so_far.items() if n > 0}
        for cid, report in reports.items():
            assert report["accountant"] == "rdp"
            assert report["delta"] == DELTA
            assert len(report["history"]) == report["rounds_trained"] == trained_so_far[cid]
            independent = rdp_epsilon(report["history"], report["delta"])
            assert report["epsilon"] == pytest.approx(independent, rel=0.01), (record.round, cid)
        assert record.privacy["max_epsilon"] == max(r["epsilon"] for r in reports.values())
    last = rounds[-1].privacy["clients"]
    assert len({round(r["epsilon"], 6) for r in last.values()}) > 1  # unequal spend
    assert max(trained_so_far.values()) == 3


# ---------------------------------------------------------------------- b. budgets
def test_clients_exhaust_their_budgets_at_different_rounds_and_the_run_stops() -> None:
    # Arrange: sigma 1, budget 6.5 -> client 2 (q=1) refuses round 2, clients 0 and 3
    # (q=0.2) round 3, client 1 (q=1/6) round 4; nobody is left for round 5 of 8.
    budget = 6.5
    cfg = small(experiment={"rounds": 8}, privacy={"budget_epsilon": budget})

    # Act
    outcome = simulate(cfg, verbose=False)

    # Assert
    summary = outcome.summary
    assert [r.round for r in summary.rounds] == [1, 2, 3, 4]
    assert "budget" in summary.stop_reason
    refused_at = {cid: r.round for r in summary.rounds for cid in r.refused}
    assert refused_at == {"2": 2, "0": 3, "3": 3, "1": 4}
    for record in summary.rounds:
        for cid, reason in record.refused.items():
            assert "budget_epsilon" in reason
            assert cid not in record.trained
            later = [r for r in summary.rounds if r.round > record.round]
            assert all(cid not in r.sampled for r in later)  # never sampled again
        expected_trained = sorted(c for c, at in refused_at.items() if record.round < at)
        assert sorted(record.trained) == expected_trained  # the others carry on
        for report in record.privacy["clients"].values():
            assert report["epsilon"] <= budget
    final = summary.rounds[-1].privacy["clients"]
    assert all(r["exhausted"] for r in final.values())
    assert {cid: final[cid]["rounds_trained"] for cid in CLIENT_IDS} == {
        "0": 2,
        "1": 3,
        "2": 1,
        "3": 2,
    }
    assert all(info["exhausted"] for info in summary.clients.values())


# ---------------------------------------------------------------------- c. restarts
def restart_and_continue(
    tmp_path: Path, *, round_offset: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rounds 1-2 in one process, then one round in a new process on the same state."""
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT, encoding="utf-8")
    state = tmp_path / "state"
    first = run_in_new_process(small(experiment={"rounds": 2}), state, script)
    second = run_in_new_process(
        small(experiment={"rounds": 1}), state, script, round_offset=round_offset
    )
    return first[-1], second[0]


def test_restarted_agents_continue_every_clients_on_disk_epsilon(tmp_path: Path) -> None:
    # Act: the agents restart and come back for round 3
    last_before, first_after = restart_and_continue(tmp_path, round_offset=2)

    # Assert
    before = last_before["privacy"]["clients"]
    after = first_after["privacy"]["clients"]
    assert set(before) == set(CLIENT_IDS)
    assert all(len(r["history"]) == 2 for r in before.values())
    assert first_after["failures"] == {}
    assert sorted(first_after["trained"]) == CLIENT_IDS
    for cid in CLIENT_IDS:
        history = after[cid]["history"]
        assert history[:2] == before[cid]["history"]  # continued, not reset
        assert len(history) == 3
        assert after[cid]["epsilon"] > before[cid]["epsilon"]
        assert after[cid]["epsilon"] == pytest.approx(rdp_epsilon(history, DELTA), rel=0.01)
    ledger = PrivacyLedger.load(tmp_path / "state" / "node-1" / "ledger-1.json")
    assert [e.round for e in ledger.entries] == [1, 2, 3]


def test_a_new_run_on_the_same_nodes_continues_their_epsilon(tmp_path: Path) -> None:
    # Act: a whole new federation (its rounds start at 1) on the nodes' state dirs
    last_before, first_after = restart_and_continue(tmp_path, round_offset=0)

    # Assert
    assert first_after["failures"] == {}
    for cid, report in first_after["privacy"]["clients"].items():
        assert report["history"][:2] == last_before["privacy"]["clients"][cid]["history"]
        assert report["epsilon"] > last_before["privacy"]["clients"][cid]["epsilon"]


def test_a_corrupt_ledger_file_fails_only_its_client(tmp_path: Path) -> None:
    # Arrange: one round in one process, then client 3's ledger file is damaged
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT, encoding="utf-8")
    state = tmp_path / "state"
    run_in_new_process(small(experiment={"rounds": 1}), state, script)
    damaged = state / "node-3" / "ledger-3.json"
    damaged.write_text('{"format": "fedai.privacy-ledger", "entries": [', encoding="utf-8")

    # Act
    rounds = run_in_new_process(small(experiment={"rounds": 2}), state, script)

    # Assert
    for record in rounds:
        assert set(record["failures"]) == {"3"}
        # the coordinator learns the kind of failure, never the node's paths or contents
        assert record["failures"]["3"] == "train failed: LedgerError (details in the node's log)"
        assert sorted(record["trained"]) == ["0", "1", "2"]
        assert record["accuracy"] is not None
    assert damaged.read_text(encoding="utf-8").endswith("[")  # never silently reset


# ---------------------------------------------------------------------- d. bad configs
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy.target_epsilon=0", "privacy.target_epsilon must be in (0, inf"),
        ("privacy.target_epsilon=-1.5", "privacy.target_epsilon must be in (0, inf"),
        ("privacy.delta=0", "privacy.delta must be in (0, 1); got 0"),
        ("privacy.delta=1.0", "privacy.delta must be in (0, 1); got 1.0"),
        ("privacy.max_grad_norm=-1.0", "privacy.max_grad_norm must be in (0, inf"),
        ("privacy.max_grad_norm=inf", "privacy.max_grad_norm must be in (0, inf); got inf"),
    ],
)
def test_a_bad_privacy_config_exits_2_before_training(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    out = tmp_path / "out"
    argv = ["--config", str(DP_DIGITS), "--set", override, "--set", "experiment.rounds=1"]

    # Act
    status = cli_main(["simulate", *argv, "--out", str(out)])

    # Assert
    assert status == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "round" not in captured.out
    assert not out.exists()


def test_a_ledger_already_past_its_budget_refuses_round_one(tmp_path: Path) -> None:
    # Arrange: client 0's node already spent epsilon > 6.5 in an earlier run
    state = tmp_path / "state"
    path = state / "node-0" / "ledger-0.json"
    spent = PrivacyLedger(client_id="0", delta=DELTA)
    spent.record(round=1, event=(0.6, 1.0, 10))
    spent.save(path)
    cfg = small(experiment={"rounds": 2}, privacy={"noise_multiplier": 1.5, "budget_epsilon": 6.5})

    # Act
    outcome = run_with_state(cfg, state)

    # Assert
    first, second = outcome.summary.rounds
    assert set(first.refused) == {"0"}
    assert "budget_epsilon 6.5" in first.refused["0"]
    assert sorted(first.trained) == ["1", "2", "3"]
    assert "0" not in second.sampled
    assert sorted(second.trained) == ["1", "2", "3"]
    assert len(PrivacyLedger.load(path)) == 1  # nothing trained, nothing recorded


# ---------------------------------------------------------------------- e. user level
def independent_user_level(rounds: list[dict[str, Any]], sampling: str) -> list[dict[str, Any]]:
    """Every user-level figure recomputed with dp-accounting from results.json alone.

    The history is each round's ``privacy.user_level.round`` entry; who took part is its
    ``trained`` list. Nothing here goes through fedai's accounting code.
    """
    relation = (
        NeighboringRelation.ADD_OR_REMOVE_ONE
        if sampling == "poisson"
        else NeighboringRelation.REPLACE_ONE
    )
    scale = 1.0 if sampling == "poisson" else 2.0  # sum sensitivity in units of C
    outsider = RdpAccountant(neighboring_relation=relation)
    taken: dict[str, list[dict[str, Any]]] = {}
    figures: list[dict[str, Any]] = []

    def composed(key: str, rounds_in: list[dict[str, Any]]) -> float:
        acc = RdpAccountant()
        for entry in rounds_in:
            acc.compose(GaussianDpEvent(entry[key] / scale))
        return float(acc.get_epsilon(DELTA))

    for record in rounds:
        h = record["privacy"]["user_level"]["round"]
        gaussian = GaussianDpEvent(h["noise_multiplier"] / scale)
        outsider.compose(
            PoissonSampledDpEvent(h["sample_rate"], gaussian)
            if sampling == "poisson"
            else SampledWithoutReplacementDpEvent(h["population"], h["sampled"], gaussian)
        )
        for cid in record["trained"]:
            taken.setdefault(cid, []).append(h)
        figures.append(
            {
                "outsider": float(outsider.get_epsilon(DELTA)),
                "known": {c: composed("noise_multiplier", hs) for c, hs in taken.items()},
                "seen": {c: composed("share_noise_multiplier", hs) for c, hs in taken.items()},
            }
        )
    return figures


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_every_user_level_figure_in_results_json_is_reproduced_by_dp_accounting(
    sampling: str, tmp_path: Path
) -> None:
    # Arrange: 2 of 4 clients a round, user-level sigma 1.2, 4 rounds, secret sampling
    sigma, rounds_run = 1.2, 4
    cfg = small(
        experiment={"clients_per_round": 2, "rounds": rounds_run},
        privacy={
            "mode": "local+user",
            "user_noise_multiplier": sigma,
            "user_clipping_norm": 1.0,
            "client_sampling": sampling,
        },
    )

    # Act
    outcome = simulate(cfg, verbose=False)
    path = save_simulation(outcome, cfg, tmp_path / "run")
    rounds = json.loads(path.read_text(encoding="utf-8"))["rounds"]

    # Assert: the recorded history is what happened
    assert len(rounds) == rounds_run
    for record in rounds:
        h = record["privacy"]["user_level"]["round"]
        assert h["client_sampling"] == sampling
        assert h["sampled"] == len(record["sampled"])
        assert h["contributed"] == len(record["trained"])
        assert h["population"] == NUM_CLIENTS
        assert h["sample_rate"] == 2 / NUM_CLIENTS
        if record["trained"]:
            assert h["noise_multiplier"] == pytest.approx(
                sigma * (len(record["trained"]) / len(record["sampled"])) ** 0.5
            )
            assert h["share_noise_multiplier"] == pytest.approx(
                sigma / len(record["sampled"]) ** 0.5
            )
        if sampling == "fixed":
            assert len(record["sampled"]) == 2
        else:
            assert record["status"] == ("skipped" if not record["sampled"] else "ok")
    # ... and every figure, after every round, is dp-accounting's from that history
    independent = independent_user_level(rounds, sampling)
    for record, theirs in zip(rounds, independent, strict=True):
        user = record["privacy"]["user_level"]
        assert user["client_sampling"] == sampling
        assert user["delta"] == DELTA
        assert user["epsilon"] == user["against_outsiders"]["epsilon"]
        assert user["epsilon"] == pytest.approx(theirs["outsider"], rel=0.01)
        assert "OS entropy" in user["against_outsiders"]["assumption"]
        for name, key in (("participation_known", "known"), ("coordinator_sees_updates", "seen")):
            view = user[name]
            assert "assumption" in view
            assert set(view["clients"]) == set(theirs[key])
            for cid, mine in view["clients"].items():
                assert mine["epsilon"] == pytest.approx(theirs[key][cid], rel=0.01), (name, cid)
            worst = max(theirs[key].values(), default=0.0)
            assert view["epsilon"] == pytest.approx(worst, rel=0.01)
