"""Federated feature statistics in real in-process runs (server.statistics, clients.app).

Each case runs the real ServerApp and ClientApp in-process on breast cancer with
``data.standardize = "zscore"`` (so every node standardises), a small federation and
few rounds: opting out, DP, a hostile coordinator aggregate, a malformed node reply,
resuming, and the stage's absence where no node standardises. The last cases play one
poisoning node in the issue's setting (breast cancer as a CSV, every default: 10 clients,
Dirichlet(0.5), 20 rounds) with declared feature bounds, in the clear and under CKKS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

import clients.app as client_module
from clients.app import app as client_app
from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.data import raw_client, scaling
from fedai.errors import CorruptPayloadError
from fedai.federation import keys
from fedai.federation.flower_internals import set_message_id, set_task_identity
from fedai.federation.inprocess import run_inprocess
from fedai.federation.records import payload_to_record, record_to_payload
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration

NUM_CLIENTS = 4
ROUNDS = 2
BAD = 1  # partition id (= client id) of the node that misbehaves or opts out
WIDE = "[-20, 20]"  # declared bounds that clip nothing of the built-in breast cancer set


def config(**sections: dict[str, Any]) -> ExperimentConfig:
    base: dict[str, dict[str, Any]] = {
        "experiment": {
            "rounds": ROUNDS,
            "num_clients": NUM_CLIENTS,
            "clients_per_round": NUM_CLIENTS,
        },
        # the built-in set is standardised at the source: every value lies in [-20, 20]
        "data": {"dataset": "breast_cancer", "standardize": "zscore", "feature_bounds": WIDE},
        "train": {"local_epochs": 1},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return ExperimentConfig.from_mapping(base)


def sim_nodes(**extra: dict[str, str]) -> list[dict[str, bool | int | float | str]]:
    """Flower's simulation node configs; ``extra[str(i)]`` adds keys to node ``i``."""
    return [
        {"partition-id": i, "num-partitions": NUM_CLIENTS, **extra.get(str(i), {})}
        for i in range(NUM_CLIENTS)
    ]


def run(
    cfg: ExperimentConfig,
    app: ClientApp = client_app,
    *,
    nodes: list[dict[str, bool | int | float | str]] | None = None,
    sent: list[Message] | None = None,
    num_supernodes: int = NUM_CLIENTS,
    **server: Any,
) -> RunOutcome:
    outcomes: list[RunOutcome] = []

    def tap(kind: str, msg: Message) -> None:
        if sent is not None and kind == "send":
            sent.append(msg)

    run_inprocess(
        build_server_app(cfg, sink=outcomes.append, **server),
        app,
        num_supernodes=num_supernodes,
        node_configs=nodes,
        tap=tap,
    )
    assert len(outcomes) == 1, "the run must finish and report"
    return outcomes[0]


def pooled_by_numpy(cfg: ExperimentConfig, partitions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The pooled mean and std of ``partitions``' raw training splits, computed directly."""
    rows = np.concatenate([raw_client(cfg, i).x_train for i in partitions]).astype(np.float64)
    return rows.mean(axis=0), rows.std(axis=0)


def context(partition: int, **node: str) -> Context:
    return Context(
        run_id=1,
        node_id=100 + partition,
        node_config={"partition-id": partition, "num-partitions": NUM_CLIENTS, **node},
        state=RecordDict(),
        run_config={},
    )


def message(cfg: ExperimentConfig, *, payload: list[np.ndarray] | None, weight: Any) -> Message:
    """An evaluate message as the coordinator would send it in round 1 (model from seed)."""
    config_record = ConfigRecord(
        {
            keys.KEY_SERVER_ROUND: 1,
            keys.KEY_EXPERIMENT: cfg.to_json(),
            keys.KEY_INIT: True,
            keys.KEY_TOTAL_WEIGHT: 0.0,
        }
    )
    if weight is not None:
        config_record[keys.KEY_STATISTICS_WEIGHT] = weight
    records: dict[str, Any] = {keys.REC_ARRAYS: ArrayRecord(), keys.REC_CONFIG: config_record}
    if payload is not None:
        records[keys.REC_STATISTICS] = payload_to_record(payload)
    set_task_identity(run_id=1, node_id=1)  # what Flower's runtimes set before Message()
    msg = Message(RecordDict(records), dst_node_id=100, message_type=keys.MSG_EVALUATE)
    set_message_id(msg, "m1")
    return msg


# ---------------------------------------------------------------- the stage itself
def test_every_node_standardises_with_the_pooled_training_statistics() -> None:
    cfg = config()
    sent: list[Message] = []

    outcome = run(cfg, sent=sent)

    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert stats["contributors"] == NUM_CLIENTS
    assert stats["total_count"] == sum(len(raw_client(cfg, i).y_train) for i in range(4))
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS
    # one statistics message per node, before round 1; the sum rides on every later one
    kinds = [m.metadata.message_type for m in sent]
    assert kinds.count(keys.MSG_STATISTICS) == NUM_CLIENTS
    later = [m for m in sent if m.metadata.message_type in (keys.MSG_TRAIN, keys.MSG_EVALUATE)]
    assert later
    assert all(keys.REC_STATISTICS in m.content.array_records for m in later)
    # what a node derived is numpy's mean/std over every node's raw training rows
    mean, std = pooled_by_numpy(cfg, list(range(NUM_CLIENTS)))
    msg = next(m for m in later if m.metadata.message_type == keys.MSG_TRAIN)
    data = client_module.data_for(msg, context(0), cfg)
    raw = raw_client(cfg, 0)
    np.testing.assert_allclose(data.x_train, ((raw.x_train - mean) / std), rtol=1e-5, atol=1e-5)


def test_no_stage_and_no_extra_message_when_no_node_standardises() -> None:
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 1, "num_clients": NUM_CLIENTS, "clients_per_round": 4},
            "data": {"dataset": "breast_cancer"},  # built in, already scaled: auto = none
            "train": {"local_epochs": 1},
        }
    )
    sent: list[Message] = []

    outcome = run(cfg, sent=sent)

    assert outcome.summary.statistics == {"mode": "none"}
    assert keys.MSG_STATISTICS not in [m.metadata.message_type for m in sent]
    assert not any(keys.REC_STATISTICS in m.content.array_records for m in sent)


def test_a_node_that_opts_out_trains_on_its_own_statistics() -> None:
    cfg = config()
    sent: list[Message] = []
    nodes = sim_nodes(**{str(BAD): {"share-statistics": "false"}})

    outcome = run(cfg, nodes=nodes, sent=sent)

    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert stats["contributors"] == NUM_CLIENTS - 1
    assert str(BAD) not in stats["clients"]
    assert stats["declined"] == {str(BAD): "node policy share-statistics is false"}
    for r in outcome.summary.rounds:
        assert r.status == "ok", r.reason
        assert str(BAD) in r.trained
    # the pooled statistics are the other nodes'; the opted-out node uses its own
    mean, std = pooled_by_numpy(cfg, [i for i in range(NUM_CLIENTS) if i != BAD])
    msg = next(m for m in sent if m.metadata.message_type == keys.MSG_TRAIN)
    raw = raw_client(cfg, BAD)
    own = client_module.data_for(msg, context(BAD, **{"share-statistics": "false"}), cfg)
    np.testing.assert_allclose(own.x_train, scaling.fit(raw.x_train).transform(raw.x_train))
    raw0 = raw_client(cfg, 0)
    shared = client_module.data_for(msg, context(0), cfg)
    np.testing.assert_allclose(shared.x_train, (raw0.x_train - mean) / std, rtol=1e-4, atol=1e-5)


def test_dp_runs_use_local_statistics_without_the_stage() -> None:
    cfg = config(
        privacy={"mode": "local", "noise_multiplier": 1.0},
        experiment={"rounds": 1},
    )
    sent: list[Message] = []

    outcome = run(cfg, sent=sent)

    assert outcome.summary.statistics["mode"] == "local"
    assert "privacy.mode 'local'" in outcome.summary.statistics["reason"]
    assert keys.MSG_STATISTICS not in [m.metadata.message_type for m in sent]
    assert outcome.summary.rounds[0].status == "ok", outcome.summary.rounds[0].reason


# ---------------------------------------------------------------- hostile parties
def honest_aggregate(
    cfg: ExperimentConfig, partitions: list[int]
) -> tuple[list[np.ndarray], float]:
    codec, step = client_module.statistics_codec(context(0), cfg)
    payloads = []
    for i in partitions:
        raw = raw_client(cfg, i)
        payloads.append(
            codec.encode_moments(scaling.moments(raw.x_train, bounds=codec.bounds), step=step)
        )
    summed = [sum(p[0] for p in payloads)]
    return summed, float(sum(len(raw_client(cfg, i).y_train) for i in partitions))


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (lambda p, w: ([p[0][:, :, :-1]], w), "aggregate shapes must be"),
        (lambda p, w: ([np.full_like(p[0], np.nan)], w), "must be finite"),
        (lambda p, w: (p, 3.0), "total count must be in ["),
        (lambda p, w: (p, "456"), "statistics-weight must be a number"),
    ],
    ids=["wrong-length", "nan", "count-below-own", "weight-not-a-number"],
)
def test_a_hostile_coordinator_aggregate_is_refused_by_the_node(
    tamper: Callable[[list[np.ndarray], float], tuple[list[np.ndarray], Any]], needle: str
) -> None:
    cfg = config()
    payload, weight = honest_aggregate(cfg, list(range(NUM_CLIENTS)))
    bad_payload, bad_weight = tamper(payload, weight)
    msg = message(cfg, payload=bad_payload, weight=bad_weight)

    with pytest.raises(CorruptPayloadError, match=needle.replace("[", r"\[")):
        client_module.data_for(msg, context(0), cfg)
    reply = client_app(msg, context(0))  # the handler refuses it and names only the type
    record = reply.content.config_records[keys.REC_FEDAI]
    assert record[keys.KEY_STATUS] == keys.STATUS_REJECTED
    # only the error's type (a CorruptPayloadError or a subclass), never a value
    assert re.fullmatch(r"aggregate rejected: \w+Error", str(record[keys.KEY_REASON]))


def test_a_negative_variance_aggregate_is_refused() -> None:
    cfg = config()
    payload, weight = honest_aggregate(cfg, list(range(NUM_CLIENTS)))
    tampered = payload[0].copy()
    tampered[:, 1, :] = 0.0  # every mean square 0: variance = -mean**2 < 0
    msg = message(cfg, payload=[tampered], weight=weight)

    with pytest.raises(scaling.StatisticsBoundsError, match="must satisfy variance >= 0"):
        client_module.data_for(msg, context(0), cfg)


def malformed(kind: str) -> ClientApp:
    """The real ClientApp; node BAD's statistics reply is rewritten."""
    app = ClientApp()

    def statistics(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        if ctx.node_config[keys.NODE_PARTITION_ID] != BAD:
            return reply
        arrays = reply.content.array_records[keys.REC_ARRAYS]
        if kind == "shape":
            reply.content.array_records[keys.REC_ARRAYS] = payload_to_record([np.zeros((2, 2, 30))])
        elif kind == "count":
            reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES] = 10**6
        elif kind == "nan":
            reply.content.array_records[keys.REC_ARRAYS] = payload_to_record(
                [np.full_like(a, np.nan) for a in record_to_payload(arrays)]
            )
        elif kind == "missing":
            del reply.content.array_records[keys.REC_ARRAYS]
        elif kind == "range":  # limbs beyond the bound: nodes would reject the whole sum
            reply.content.array_records[keys.REC_ARRAYS] = payload_to_record(
                [a * 1e6 for a in record_to_payload(arrays)]
            )
        elif kind == "variance":  # in bounds, but mean square 0: variance = -mean**2 < 0
            (limbs,) = record_to_payload(arrays)
            limbs[:, 1, :] = 0.0
            reply.content.array_records[keys.REC_ARRAYS] = payload_to_record([limbs])
        return reply

    def passthrough(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    app.query()(passthrough)
    app.query("statistics")(statistics)
    app.train()(passthrough)
    app.evaluate()(passthrough)
    return app


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("shape", "shapes must be"),
        ("count", "statistics num-examples must be in"),
        ("nan", "must be finite"),
        ("missing", "reply must carry an ArrayRecord"),
        # in the clear the coordinator checks each node's moments as the nodes check the sum
        ("range", "within +-1"),
        ("variance", "must satisfy variance >= 0"),
    ],
)
def test_a_malformed_statistics_reply_is_left_out_and_the_run_goes_on(
    kind: str, needle: str
) -> None:
    cfg = config()

    outcome = run(cfg, malformed(kind))

    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert stats["contributors"] == NUM_CLIENTS - 1
    assert str(BAD) not in stats["clients"]
    assert needle in stats["failures"][str(BAD)]
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS


def test_too_few_sharing_nodes_means_local_statistics_for_all() -> None:
    cfg = config(secure_aggregation={"min_contributors": NUM_CLIENTS})
    nodes = sim_nodes(**{str(BAD): {"share-statistics": "false"}})
    sent: list[Message] = []

    outcome = run(cfg, nodes=nodes, sent=sent)

    stats = outcome.summary.statistics
    assert stats["mode"] == "local"
    assert "at least 4 needed (2, or secure_aggregation.min_contributors" in stats["reason"]
    assert not any(keys.REC_STATISTICS in m.content.array_records for m in sent)


def test_one_sharing_node_is_never_a_sum_sent_to_the_others() -> None:
    # Arrange: min_contributors 1 (the default), and every node but one declines
    cfg = config()
    assert cfg.secure_aggregation.min_contributors == 1
    nodes = sim_nodes(
        **{str(i): {"share-statistics": "false"} for i in range(NUM_CLIENTS) if i != BAD}
    )
    sent: list[Message] = []

    # Act
    outcome = run(cfg, nodes=nodes, sent=sent)

    # Assert: a "sum" of one would be node BAD's own moments, delivered to everyone
    stats = outcome.summary.statistics
    assert stats["mode"] == "local"
    assert "1 of" in stats["reason"]
    assert "at least 2 needed" in stats["reason"]
    assert not any(keys.REC_STATISTICS in m.content.array_records for m in sent)
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS


# ---------------------------------------------------------------- checkpoint and HE
def test_a_resumed_run_keeps_its_statistics(tmp_path: Path) -> None:
    import dataclasses

    from server.checkpointing import load_for

    cfg = config()
    first = run(cfg, checkpoint_dir=tmp_path)
    ckpt = load_for(tmp_path, cfg)
    assert ckpt is not None
    assert ckpt.statistics_view["mode"] == "federated"
    assert ckpt.statistics is not None
    # as if the coordinator had stopped after round 1
    dataclasses.replace(ckpt, round=1, records=ckpt.records[:1]).save(tmp_path)
    after_one = load_for(tmp_path, cfg)
    sent: list[Message] = []

    resumed = run(cfg, checkpoint_dir=tmp_path, resume=after_one, sent=sent)

    assert keys.MSG_STATISTICS not in [m.metadata.message_type for m in sent]
    trains = [m for m in sent if m.metadata.message_type == keys.MSG_TRAIN]
    assert len(trains) == NUM_CLIENTS  # round 2 only
    for m in trains:  # the stored sum, byte for byte
        carried = record_to_payload(m.content.array_records[keys.REC_STATISTICS])
        assert len(carried) == len(ckpt.statistics)
        for a, b in zip(carried, ckpt.statistics, strict=True):
            np.testing.assert_array_equal(a, b)
    assert resumed.summary.statistics == first.summary.statistics
    assert [r.status for r in resumed.summary.rounds] == ["ok"] * ROUNDS
    assert json.dumps(resumed.summary.statistics)  # results.json can hold it


def test_statistics_under_paillier_equal_numpy(tmp_path: Path) -> None:
    create_keys(tmp_path, scheme="paillier", key_bits=2048)
    cfg = config(secure_aggregation={"scheme": "paillier", "key_dir": str(tmp_path)})
    ctx = context(0)
    codec, step = client_module.statistics_codec(ctx, cfg)
    from fedai.schemes import coordinator_sum

    summer = coordinator_sum(cfg.secure_aggregation)
    payloads, total = [], 0
    for i in range(NUM_CLIENTS):
        raw = raw_client(cfg, i)
        payload = codec.encode_moments(scaling.moments(raw.x_train, bounds=codec.bounds), step=step)
        summer.check(payload, scaling.shapes_of(30, step=step))
        payloads.append(payload)
        total += len(raw.y_train)

    (average,) = codec.decode(summer.sum(payloads), total, scaling.shapes_of(30, step=step))
    scaler = scaling.pooled(
        average,
        total_count=total,
        own_count=1,
        sample_shape=(30,),
        step=step,
        bounds=codec.bounds,
    )

    mean, std = pooled_by_numpy(cfg, list(range(NUM_CLIENTS)))
    np.testing.assert_allclose(scaler.mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scaler.scale, std, rtol=1e-6)


def test_a_small_paillier_run_uses_federated_statistics(tmp_path: Path) -> None:
    create_keys(tmp_path, scheme="paillier", key_bits=2048)
    cfg = config(
        secure_aggregation={"scheme": "paillier", "key_dir": str(tmp_path), "workers": 1},
        model={"name": "logreg"},
    )

    outcome = run(cfg)

    assert outcome.summary.statistics["mode"] == "federated"
    assert outcome.summary.statistics["contributors"] == NUM_CLIENTS
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS


# ---------------------------------------------------------------- bounded statistics
# The setting: breast cancer as a user's CSV, every default (10 clients,
# Dirichlet(0.5) label skew, 20 rounds), client 0 poisoning its statistics.
POISONER = 0
BC_CLIENTS = 10


def _round_up(value: float) -> float:
    """``value`` rounded up to two significant digits (a public, data-sheet-like bound)."""
    exponent = 10.0 ** (np.floor(np.log10(value)) - 1)
    return float(np.ceil(value / exponent) * exponent)


@pytest.fixture(scope="module")
def breast_cancer_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """scikit-learn's breast cancer set as a user would export it, and declared bounds.

    Every feature is a non-negative measurement; the bounds are ``[0, max]`` with the
    maximum rounded up to two significant digits.
    """
    import csv

    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    path = tmp_path_factory.mktemp("bc-csv") / "breast_cancer.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(name.replace(" ", "_") for name in data.feature_names), "label"])
        for row, label in zip(data.data, data.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
    bounds = [[0.0, _round_up(float(v))] for v in data.data.max(axis=0)]
    return path, json.dumps(bounds)


@pytest.fixture(scope="module")
def ckks_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckks-keys")
    create_keys(out)
    return out


def csv_config(
    csv_and_bounds: tuple[Path, str], scheme: str, keys_dir: Path, **over: Any
) -> ExperimentConfig:
    path, bounds = csv_and_bounds
    secure: dict[str, Any] = {"scheme": scheme}
    if scheme == "ckks":
        secure["key_dir"] = str(keys_dir)
    return ExperimentConfig.from_mapping(
        {
            "data": {"dataset": f"csv:{path}", "feature_bounds": bounds},
            "secure_aggregation": secure,
            **over,
        }
    )


def poisoning(attack: str) -> ClientApp:
    """The real ClientApp; client POISONER replaces its shared moments by ``attack``'s.

    ``pull``: valid moments that pull hardest (every feature's mean at the bound farther
    from its own data, variance 0). ``outside``: moments no distribution within the
    bounds has (mean 0.05, mean square 1: a variance beyond the Bhatia-Davis bound).
    Encoded with the node's real codec (encrypted under CKKS), weighted by its count.
    """
    app = ClientApp()

    def statistics(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        is_share = keys.REC_STATISTICS not in msg.content.array_records
        if ctx.node_config[keys.NODE_PARTITION_ID] != POISONER or not is_share:
            return reply
        cfg = client_module.experiment_of(msg)
        codec, step = client_module.statistics_codec(ctx, cfg)
        raw, _ = client_module.raw_data_of(ctx, cfg)
        own = scaling.moments(raw.x_train, bounds=codec.bounds)
        if attack == "pull":
            mean = np.where(own.mean < 0.5, 1.0, 0.0)
            mean_square = mean
        else:
            mean, mean_square = np.full_like(own.mean, 0.05), np.ones_like(own.mean)
        limbs = scaling.share(
            scaling.Moments(count=own.count, mean=mean, mean_square=mean_square), step=step
        )
        reply.content.array_records[keys.REC_ARRAYS] = payload_to_record(
            codec.encode([limbs], own.count)
        )
        return reply

    def passthrough(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    app.query()(passthrough)
    app.query("statistics")(statistics)
    app.train()(passthrough)
    app.evaluate()(passthrough)
    return app


def pooled_mean_sent(cfg: ExperimentConfig, sent: list[Message]) -> np.ndarray:
    """The pooled feature means every node standardised with (decoded from round 1's)."""
    msg = next(m for m in sent if m.metadata.message_type == keys.MSG_TRAIN)
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": BC_CLIENTS},
        state=RecordDict(),
        run_config={},
    )
    codec, step = client_module.statistics_codec(ctx, cfg)
    weight = msg.content.config_records[keys.REC_CONFIG][keys.KEY_STATISTICS_WEIGHT]
    scaler = scaling.decode_pooled(
        codec,
        record_to_payload(msg.content.array_records[keys.REC_STATISTICS]),
        total_count=float(weight),  # type: ignore[arg-type]
        own_count=1,
        sample_shape=(30,),
        step=step,
    )
    return scaler.mean


@pytest.mark.parametrize("scheme", ["none", "ckks"])
def test_one_poisoning_node_moves_the_pooled_mean_by_at_most_its_weight_share(
    scheme: str, breast_cancer_csv: tuple[Path, str], ckks_keys: Path
) -> None:
    # Arrange
    cfg = csv_config(breast_cancer_csv, scheme, ckks_keys)
    assert cfg.experiment.num_clients == BC_CLIENTS
    assert cfg.experiment.rounds == 20
    sent: list[Message] = []

    # Act
    outcome = run(cfg, poisoning("pull"), sent=sent, num_supernodes=BC_CLIENTS)

    # Assert: the run is unharmed...
    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert stats["contributors"] == BC_CLIENTS  # the poisoned moments are valid: in the sum
    assert stats["checked"] == ("each node" if scheme == "none" else "sum")
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * 20
    assert outcome.summary.final["accuracy"] >= 0.93
    # ...and every pooled mean moved by at most n_0 / N of its feature's range
    splits = [raw_client(cfg, i).x_train for i in range(BC_CLIENTS)]
    bounds = scaling.FeatureBounds.from_config(cfg.data)
    assert bounds is not None
    low, high = bounds.arrays(30)
    honest = np.clip(np.concatenate(splits).astype(np.float64), low, high).mean(axis=0)
    total = sum(len(x) for x in splits)
    assert stats["total_count"] == total
    limit = scaling.influence_bound(
        count=len(splits[POISONER]), total_count=total, bounds=bounds, num_features=30
    )
    shift = np.abs(pooled_mean_sent(cfg, sent) - honest)
    assert np.all(shift <= limit * (1 + 1e-6))
    assert np.all(shift >= 0.5 * limit * (1 - 1e-6))  # and the attack did pull


@pytest.mark.parametrize("scheme", ["none", "ckks"])
def test_moments_outside_the_bounds_are_left_out_in_the_clear_and_refused_under_he(
    scheme: str, breast_cancer_csv: tuple[Path, str], ckks_keys: Path
) -> None:
    cfg = csv_config(breast_cancer_csv, scheme, ckks_keys, experiment={"rounds": 2})
    sent: list[Message] = []

    outcome = run(cfg, poisoning("outside"), sent=sent, num_supernodes=BC_CLIENTS)

    stats = outcome.summary.statistics
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * 2  # the run goes on
    if scheme == "none":  # the coordinator checks each node alone: only the poisoner is out
        assert stats["mode"] == "federated"
        assert stats["contributors"] == BC_CLIENTS - 1
        assert str(POISONER) not in stats["clients"]
        assert "StatisticsBoundsError" in stats["failures"][str(POISONER)]
        assert "Bhatia-Davis" in stats["failures"][str(POISONER)]
    else:  # the contributors check the sum (and the rest without their own): refused
        assert stats["mode"] == "local"
        assert stats["checked"] == "sum"
        assert "refused the pooled statistics" in stats["reason"]
        assert stats["refused"]
        for reason in stats["refused"].values():
            assert reason.startswith("statistics rejected: StatisticsBoundsError (")
        rounds = [m for m in sent if m.metadata.message_type != keys.MSG_STATISTICS]
        assert rounds
        assert not any(keys.REC_STATISTICS in m.content.array_records for m in rounds)
    assert json.dumps(stats)  # results.json can hold the record


def test_a_node_takes_part_only_if_the_run_narrows_its_own_bounds(tmp_path: Path) -> None:
    # Arrange: node BAD's operator allows less than the run declares; node 2 allows more
    narrow, wide = tmp_path / "narrow.json", tmp_path / "wide.json"
    narrow.write_text("[-5, 5]", encoding="utf-8")
    wide.write_text(json.dumps([[-50, 50]] * 30), encoding="utf-8")
    cfg = config()
    nodes = sim_nodes(
        **{str(BAD): {"feature-bounds": str(narrow)}, "2": {"feature-bounds": str(wide)}}
    )

    # Act
    outcome = run(cfg, nodes=nodes)

    # Assert
    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert stats["declined"] == {
        str(BAD): "data.feature_bounds is wider than the node's feature-bounds on every feature"
    }
    assert "2" in stats["clients"]
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS


def test_a_node_announcing_too_large_a_count_share_is_left_out() -> None:
    # Arrange: node BAD announces 50x its training count (discovery, statistics, weight)
    cfg = config(data={"max_statistics_weight_share": 0.5})

    app = ClientApp()

    def hello(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        if ctx.node_config[keys.NODE_PARTITION_ID] == BAD:
            rec = reply.content.config_records[keys.REC_FEDAI]
            rec[keys.KEY_NUM_TRAIN] = 50 * int(str(rec[keys.KEY_NUM_TRAIN]))
        return reply

    def statistics(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        if ctx.node_config[keys.NODE_PARTITION_ID] == BAD:
            codec, step = client_module.statistics_codec(ctx, cfg)
            raw = raw_client(cfg, BAD)
            own = scaling.moments(raw.x_train, bounds=codec.bounds)
            inflated = scaling.Moments(
                count=50 * own.count, mean=own.mean, mean_square=own.mean_square
            )
            reply.content.array_records[keys.REC_ARRAYS] = payload_to_record(
                codec.encode_moments(inflated, step=step)
            )
            reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES] = inflated.count
        return reply

    def passthrough(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    app.query()(hello)
    app.query("statistics")(statistics)
    app.train()(passthrough)
    app.evaluate()(passthrough)

    # Act
    outcome = run(cfg, app)

    # Assert
    stats = outcome.summary.statistics
    assert stats["mode"] == "federated"
    assert str(BAD) not in stats["clients"]
    assert stats["contributors"] == NUM_CLIENTS - 1
    assert "exceeds data.max_statistics_weight_share 0.5" in stats["failures"][str(BAD)]
