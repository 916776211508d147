import json

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients.app import app as client_app
from fedai.cli import main as cli_main
from fedai.commands.simulate import simulate
from fedai.config import ExperimentConfig
from fedai.federation import flower_internals as fi
from fedai.federation import keys
from fedai.federation.inprocess import InProcessGrid, run_inprocess
from fedai.models import load_model
from server.app import build_server_app

pytestmark = pytest.mark.integration


def small(**sections):
    base = {"experiment": {"rounds": 3, "num_clients": 4, "clients_per_round": 4}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return ExperimentConfig.from_mapping(base)


def test_quickstart_reaches_093_and_writes_results(tmp_path, capsys):
    # Act: the README's first command, in-process, 20 rounds
    status = cli_main(["simulate", "--out", str(tmp_path)])
    # Assert
    assert status == 0
    out = capsys.readouterr().out
    assert out.count("round ") >= 20
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["final"]["accuracy"] >= 0.93
    assert [r["round"] for r in results["rounds"]] == list(range(1, 21))
    assert {"round", "accuracy", "loss", "seconds"} <= set(results["rounds"][0])
    assert results["config"]["data"]["dataset"] == "digits"
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    _model, spec = load_model(tmp_path)
    assert spec.name == "mlp"
    assert spec.input_shape == (1, 8, 8)


def test_same_seed_same_model_different_seed_different_model():
    a = simulate(small(), verbose=False)
    b = simulate(small(), verbose=False)
    c = simulate(small(experiment={"seed": 5}), verbose=False)
    assert all(np.array_equal(x, y) for x, y in zip(a.payload, b.payload, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.payload, c.payload, strict=True))


def test_partial_participation_samples_deterministically_by_client_id():
    cfg = small(experiment={"num_clients": 6, "clients_per_round": 2, "rounds": 4})
    a = simulate(cfg, verbose=False).summary.rounds
    b = simulate(cfg, verbose=False).summary.rounds
    assert [r.sampled for r in a] == [r.sampled for r in b]
    assert all(len(r.sampled) == 2 for r in a)
    assert len({tuple(r.sampled) for r in a}) > 1


def test_a_crashing_client_is_recorded_and_the_run_continues():
    # Arrange: client 2 raises in round 2
    flaky = ClientApp()

    @flaky.query()
    def _q(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    @flaky.train()
    def _t(msg: Message, ctx: Context) -> Message:
        rnd = int(msg.content.config_records[keys.REC_CONFIG][keys.KEY_SERVER_ROUND])
        if ctx.node_config["partition-id"] == 2 and rnd == 2:
            raise RuntimeError("disk on fire")
        return client_app(msg, ctx)

    @flaky.evaluate()
    def _e(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    outcomes = []
    # Act
    run_inprocess(build_server_app(small(), sink=outcomes.append), flaky, num_supernodes=4)
    # Assert
    rounds = outcomes[0].summary.rounds
    assert "disk on fire" in rounds[1].failures["2"]
    assert rounds[1].status == "ok"
    assert sorted(rounds[1].trained) == ["0", "1", "3"]
    assert rounds[2].trained == ["0", "1", "2", "3"]


def test_a_node_with_a_bad_data_file_is_left_out_at_discovery(tmp_path):
    # Arrange: three simulated clients and one real node whose file is missing
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(3)]
    nodes.append({"data-path": str(tmp_path / "missing.csv"), "client-id": "org-x"})
    cfg = small(experiment={"num_clients": 3, "clients_per_round": 3})
    outcomes = []
    # Act
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        client_app,
        num_supernodes=4,
        node_configs=nodes,
    )
    # Assert
    assert sorted(c.client_id for c in outcomes[0].clients.values()) == ["0", "1", "2"]
    assert outcomes[0].summary.final["rounds_completed"] == 3


def _wrapped(train_fails_for=None, evaluate_fails=False):
    app = ClientApp()

    @app.query()
    def _q(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    @app.train()
    def _t(msg: Message, ctx: Context) -> Message:
        if ctx.node_config["partition-id"] == train_fails_for:
            raise RuntimeError("training crashed")
        return client_app(msg, ctx)

    @app.evaluate()
    def _e(msg: Message, ctx: Context) -> Message:
        if evaluate_fails:
            raise RuntimeError("evaluation crashed")
        return client_app(msg, ctx)

    return app


def test_min_contributors_fails_a_round_with_too_few_contributions():
    cfg = small(secure_aggregation={"min_contributors": 4})
    outcomes = []
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append), _wrapped(train_fails_for=1), num_supernodes=4
    )
    rounds = outcomes[0].summary.rounds
    assert all(r.status == "failed" for r in rounds)
    assert "at least 4 needed" in rounds[0].reason
    assert outcomes[0].payload is None


def test_an_aggregate_no_client_evaluated_is_not_accepted():
    outcomes = []
    run_inprocess(
        build_server_app(small(), sink=outcomes.append),
        _wrapped(evaluate_fails=True),
        num_supernodes=4,
    )
    rounds = outcomes[0].summary.rounds
    assert all(r.status == "failed" for r in rounds)
    assert "no client evaluated" in rounds[0].reason
    assert outcomes[0].payload is None


def test_a_restarted_agent_rejoins_and_continues_its_epsilon(tmp_path):
    # Arrange: 3 DP clients with on-disk state; client 0's agent restarts after round 2
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 4, "num_clients": 3, "clients_per_round": 3},
            "data": {"dataset": "breast_cancer", "partition": "iid"},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
            "privacy": {"mode": "local", "noise_multiplier": 1.5, "delta": 1e-5},
        }
    )
    nodes = [
        {"partition-id": i, "num-partitions": 3, "state-dir": str(tmp_path / f"n{i}")}
        for i in range(3)
    ]
    fi.set_task_identity(run_id=1, node_id=fi.SUPERLINK_NODE_ID)
    holder = {}

    def tap(direction, msg):
        if (direction, msg.metadata.message_type, msg.metadata.group_id) == (
            "receive",
            keys.MSG_EVALUATE,
            "2",
        ) and "restarted" not in holder:
            holder["restarted"] = holder["grid"].restart_node(1000)

    grid = InProcessGrid(client_app, nodes, run_id=1, run_config={}, tap=tap)
    holder["grid"] = grid
    outcomes = []
    # Act
    build_server_app(cfg, sink=outcomes.append)(
        grid, fi.make_context(run_id=1, node_id=fi.SUPERLINK_NODE_ID, node_config={}, run_config={})
    )
    # Assert: client 0 trained every round, under a new node id after the restart, and
    # its epsilon kept growing from its on-disk ledger (never reset)
    rounds = outcomes[0].summary.rounds
    assert all(sorted(r.trained) == ["0", "1", "2"] for r in rounds)
    eps = [r.privacy["clients"]["0"]["epsilon"] for r in rounds]
    assert eps == sorted(eps)
    assert len(set(eps)) == 4
    assert rounds[-1].privacy["clients"]["0"]["rounds_trained"] == 4
    assert holder["restarted"] in outcomes[0].clients
    assert 1000 not in outcomes[0].clients
