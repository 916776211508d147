"""One hostile client costs only itself: federation-level reproductions.

Each case runs the real ServerApp and ClientApp in-process; one client (a key holder: it
holds the MAC key, so its payloads authenticate) rewrites its own reply. The coordinator
must finish the run, record that client's failure with a typed reason, and keep the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.app import app as client_app
from fedai.aggregation import Payload
from fedai.config import ExperimentConfig
from fedai.crypto import ClientBundle, Envelope, Scheme, create_keys, load_client_bundle
from fedai.crypto.envelope import _FIXED, TAG_BYTES, _tag
from fedai.federation import keys
from fedai.federation.inprocess import run_inprocess
from fedai.federation.records import payload_to_record, record_to_payload
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration

NUM_CLIENTS = 4
ROUNDS = 2
BAD = 1  # partition id (= client id) of the hostile client

Hook = Callable[[Message, Context, Message], Message]


def config(key_dir: Path | None = None) -> ExperimentConfig:
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {
                "rounds": ROUNDS,
                "num_clients": NUM_CLIENTS,
                "clients_per_round": NUM_CLIENTS,
            },
            "train": {"local_epochs": 1},
        }
    )
    if key_dir is None:
        return cfg
    section = replace(cfg.secure_aggregation, scheme="ckks", key_dir=str(key_dir))
    return cfg.replace(secure_aggregation=section)


def hostile(*, query: Hook | None = None, train: Hook | None = None, evaluate: Hook | None = None):
    """The real ClientApp; client BAD's replies go through the given hooks (every round)."""
    app = ClientApp()

    def wrap(hook: Hook | None) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, ctx: Context) -> Message:
            reply = client_app(msg, ctx)
            if hook is not None and ctx.node_config[keys.NODE_PARTITION_ID] == BAD:
                return hook(msg, ctx, reply)
            return reply

        return handler

    app.query()(wrap(query))
    app.train()(wrap(train))
    app.evaluate()(wrap(evaluate))
    return app


def run(cfg: ExperimentConfig, app: ClientApp) -> RunOutcome:
    outcomes: list[RunOutcome] = []
    run_inprocess(build_server_app(cfg, sink=outcomes.append), app, num_supernodes=NUM_CLIENTS)
    assert len(outcomes) == 1, "the run must finish and report"
    return outcomes[0]


def set_config(record: str, key: str, value: Any) -> Hook:
    def hook(msg: Message, ctx: Context, reply: Message) -> Message:
        rec = reply.content.config_records.get(record, ConfigRecord())
        rec[key] = value
        reply.content.config_records[record] = rec
        return reply

    return hook


def set_metric(key: str, value: float) -> Hook:
    def hook(msg: Message, ctx: Context, reply: Message) -> Message:
        reply.content.metric_records[keys.REC_METRICS][key] = value
        return reply

    return hook


def assert_only_bad_left_out(outcome: RunOutcome, needle: str) -> None:
    rounds = outcome.summary.rounds
    assert len(rounds) == ROUNDS
    for r in rounds:
        assert r.status == "ok", r.reason
        assert str(BAD) not in r.trained
        assert sorted(r.trained) == sorted(str(i) for i in range(NUM_CLIENTS) if i != BAD)
        assert needle in r.failures[str(BAD)], r.failures
        assert r.accuracy is not None
        assert 0.0 <= r.accuracy <= 1.0


# ---------------------------------------------------------------- discovery
@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (keys.KEY_INPUT_SHAPE, "9x9", "input shape 9x9 differs"),
        (keys.KEY_CLIENT_ID, "0", "client id '0' already announced"),
        (keys.KEY_NUM_CLASSES, 10**9, "num-classes must be in [2, 10000]"),
        (keys.KEY_NUM_TRAIN, -5, "num-train must be in"),
        (keys.KEY_INPUT_SHAPE, "8x" * 40 + "8", "input shape must be 1..4 dims"),
    ],
)
def test_a_bad_discovery_reply_leaves_that_node_out(key: str, value: Any, needle: str) -> None:
    # Arrange
    app = hostile(query=set_config(keys.REC_FEDAI, key, value))

    # Act
    outcome = run(config(), app)

    # Assert: the federation runs with the others; the node is named with its reason
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * ROUNDS
    assert len(outcome.summary.excluded) == 1
    (reason,) = outcome.summary.excluded.values()
    assert needle in reason
    assert len(outcome.summary.clients) == NUM_CLIENTS - 1
    assert outcome.spec.num_classes == 10


# ---------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (keys.KEY_ACCURACY, 1e6, "accuracy must be in [0.0, 1.0]"),
        (keys.KEY_LOSS, -1.0, "loss must be in [0.0, inf]"),
        (keys.KEY_NUM_EXAMPLES, -100.0, "num-examples must be in [0.0, "),
        (keys.KEY_NUM_EXAMPLES, 1e9, "num-examples must be in [0.0, "),
    ],
)
def test_out_of_range_evaluation_metrics_are_not_averaged(
    key: str, value: float, needle: str
) -> None:
    # Act
    outcome = run(config(), hostile(evaluate=set_metric(key, value)))

    # Assert
    for r in outcome.summary.rounds:
        assert r.status == "ok"
        assert needle in r.failures[str(BAD)]
        assert 0.0 <= (r.accuracy or 0.0) <= 1.0
        assert r.loss is not None
        assert r.loss >= 0.0


@pytest.mark.parametrize("value", [-3.0, 0.0, 1e12])
def test_a_train_weight_outside_the_announced_data_is_rejected(value: float) -> None:
    outcome = run(config(), hostile(train=set_metric(keys.KEY_NUM_EXAMPLES, value)))

    assert_only_bad_left_out(outcome, "num-examples must be")


def test_a_malformed_privacy_report_costs_only_that_client() -> None:
    hook = set_config(keys.REC_FEDAI, keys.KEY_PRIVACY, '{"epsilon": -1}')

    outcome = run(config(), hostile(train=hook))

    assert_only_bad_left_out(outcome, "privacy report epsilon must be in [0,")


# ---------------------------------------------------------------- authenticated payloads
@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    create_keys(out)
    return out


@pytest.fixture(scope="module")
def bundle(key_dir: Path) -> ClientBundle:
    return load_client_bundle(key_dir)


def rewrite(mutate: Callable[[Payload], Payload]) -> Hook:
    def hook(msg: Message, ctx: Context, reply: Message) -> Message:
        payload = record_to_payload(reply.content.array_records[keys.REC_ARRAYS])
        reply.content[keys.REC_ARRAYS] = payload_to_record(mutate(payload))
        return reply

    return hook


def retag(bundle: ClientBundle, header: bytes, body: list[np.ndarray]) -> Payload:
    """What a key holder can send: any header and body under a valid tag."""
    head = header[:-TAG_BYTES]
    tag = _tag(bundle._mac_key, head, body)
    return [np.frombuffer(head + tag, np.uint8), *body]


def max_summands(bundle: ClientBundle) -> Callable[[Payload], Payload]:
    def mutate(payload: Payload) -> Payload:
        raw = bytearray(payload[0].tobytes())
        fields = list(_FIXED.unpack_from(raw))
        fields[8] = 2**32 - 1  # n_summands
        _FIXED.pack_into(raw, 0, *fields)
        return retag(bundle, bytes(raw), payload[1:])

    return mutate


def flip_ciphertext_tag(bundle: ClientBundle) -> Callable[[Payload], Payload]:
    """Bit 5 of byte 4: TenSEAL's ciphertexts field renamed; loads with no ciphertext."""

    def mutate(payload: Payload) -> Payload:
        body = [a.copy() for a in payload[1:]]
        body[0][4] ^= 1 << 5
        return retag(bundle, payload[0].tobytes(), body)

    return mutate


def other_scale(bundle: ClientBundle) -> Callable[[Payload], Payload]:
    def mutate(payload: Payload) -> Payload:
        env, blobs = Envelope.from_payload(
            payload,
            scheme=Scheme.CKKS,
            fingerprint=bundle.fingerprint,
            mac_key=bundle._mac_key,
            slots=bundle.params.slots,
        )
        size = min(env.slots, env.n_values)
        vec = ts.ckks_vector(bundle._context, np.zeros(size), scale=2.0**30)
        new = [vec.serialize(), *(b.tobytes() for b in blobs[1:])]
        return env.to_payload(new, mac_key=bundle._mac_key)

    return mutate


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (max_summands, "summand count must be in [1, 2147483647]"),
        (flip_ciphertext_tag, "must be a CKKS vector"),
        (other_scale, "scale must be 2^40"),
    ],
)
def test_an_authenticated_bad_contribution_costs_only_that_client(
    key_dir: Path, bundle: ClientBundle, make: Callable[..., Any], needle: str
) -> None:
    # Act
    outcome = run(config(key_dir), hostile(train=rewrite(make(bundle))))

    # Assert
    assert_only_bad_left_out(outcome, needle)
