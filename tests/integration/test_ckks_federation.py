"""CKKS secure aggregation end to end: real TenSEAL, real ClientApp/ServerApp, in-process.

Acceptance checks on a running federation:

* the CKKS run and the plaintext run of one config and seed end at the same model
  (<= 1e-5 per parameter) and the same accuracy (3 decimals);
* a tap on every message the coordinator sends and receives finds ciphertext envelopes
  only (no plaintext update or model, checked byte for byte against the weights the clients
  really encoded and decoded), and nothing on the coordinator's side holds a secret key;
* a corrupted, truncated, empty, random or foreign-key contribution is excluded with its
  reason recorded, and an authentic contribution that breaks the sum fails its round and
  keeps the previous model; the run always continues to the end.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import clients.app as client_module
import server.app as server_module
from clients.app import app as client_app
from fedai.aggregation import Payload, PlainCodec
from fedai.commands.simulate import save_simulation, simulate
from fedai.config import ExperimentConfig
from fedai.crypto import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    CkksCodec,
    CkksSum,
    ClientBundle,
    Envelope,
    Scheme,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.crypto.envelope import MAGIC
from fedai.federation import keys
from fedai.federation.inprocess import run_inprocess
from fedai.federation.records import payload_to_record, record_to_payload
from fedai.models import load_model
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml"
NUM_CLIENTS = 4
ROUNDS = 3
CORRUPT_CLIENT = 1  # partition id (= client id) of the misbehaving client
CORRUPT_ROUND = 2


# ---------------------------------------------------------------------- helpers
def ckks(cfg: ExperimentConfig, key_dir: Path) -> ExperimentConfig:
    """``cfg`` with CKKS secure aggregation under ``key_dir``."""
    section = replace(cfg.secure_aggregation, scheme="ckks", key_dir=str(key_dir))
    return cfg.replace(secure_aggregation=section)


def small(key_dir: Path) -> ExperimentConfig:
    return ckks(
        ExperimentConfig.from_mapping(
            {
                "experiment": {
                    "rounds": ROUNDS,
                    "num_clients": NUM_CLIENTS,
                    "clients_per_round": NUM_CLIENTS,
                }
            }
        ),
        key_dir,
    )


def round_of(msg: Message) -> int:
    return int(msg.metadata.group_id)


def arrays_of(msg: Message) -> list[np.ndarray]:
    """Every array of every ArrayRecord in a message (none for an error reply)."""
    if not msg.has_content():
        return []
    out: list[np.ndarray] = []
    for record in msg.content.array_records.values():
        out.extend(record_to_payload(record))
    return out


@dataclass
class Tapped:
    """One message as the coordinator saw it."""

    direction: str  # "send" | "receive"
    message_type: str
    round: int
    arrays: list[np.ndarray]
    configs: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    total_weight: float | None = None


@dataclass
class Tap:
    """Records every message the coordinator sends and receives."""

    seen: list[Tapped] = field(default_factory=list)

    def __call__(self, direction: str, msg: Message) -> None:
        configs: dict[str, dict[str, Any]] = {}
        metrics: dict[str, dict[str, Any]] = {}
        if msg.has_content():
            configs = {k: dict(v) for k, v in msg.content.config_records.items()}
            metrics = {k: dict(v) for k, v in msg.content.metric_records.items()}
        weight = configs.get(keys.REC_CONFIG, {}).get(keys.KEY_TOTAL_WEIGHT)
        self.seen.append(
            Tapped(
                direction=direction,
                message_type=msg.metadata.message_type,
                round=round_of(msg),
                arrays=arrays_of(msg),
                configs=configs,
                metrics=metrics,
                total_weight=None if weight is None else float(weight),
            )
        )

    def payloads(self, direction: str, message_type: str, round_: int) -> list[Tapped]:
        return [
            t
            for t in self.seen
            if (t.direction, t.message_type, t.round) == (direction, message_type, round_)
            and t.arrays
        ]

    def candidate(self, round_: int) -> Tapped:
        """The candidate aggregate the coordinator sent for federated evaluation."""
        return self.payloads("send", keys.MSG_EVALUATE, round_)[0]

    def current_model(self, round_: int) -> Tapped:
        """The global model the coordinator sent for training in ``round_``."""
        return self.payloads("send", keys.MSG_TRAIN, round_)[0]


def decrypt(bundle: ClientBundle, payload: Payload, total_weight: float) -> list[np.ndarray]:
    """The test holds the client bundle: decrypt a payload to its (rounded) average."""
    env, _ = Envelope.from_payload(
        payload,
        scheme=Scheme.CKKS,
        fingerprint=bundle.fingerprint,
        mac_key=bundle._mac_key,
        slots=bundle.params.slots,
    )
    return CkksCodec(bundle).decode(payload, total_weight, [s.shape for s in env.specs])


def max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(a, b, strict=True)
    )


def run(
    cfg: ExperimentConfig,
    app: ClientApp,
    *,
    tap: Tap | None = None,
    node_configs: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    outcomes: list[RunOutcome] = []
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        app,
        num_supernodes=cfg.experiment.num_clients,
        tap=tap,
        node_configs=node_configs,
    )
    return outcomes[0]


TrainHook = Callable[[Message, Context, Message], Message]


def client_with(hook: TrainHook) -> ClientApp:
    """The real ClientApp, with ``hook`` rewriting CORRUPT_CLIENT's CORRUPT_ROUND train reply."""
    wrapped = ClientApp()

    @wrapped.query()
    def _query(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    @wrapped.train()
    def _train(msg: Message, ctx: Context) -> Message:
        reply = client_app(msg, ctx)
        rnd = int(msg.content.config_records[keys.REC_CONFIG][keys.KEY_SERVER_ROUND])
        if ctx.node_config[keys.NODE_PARTITION_ID] == CORRUPT_CLIENT and rnd == CORRUPT_ROUND:
            return hook(msg, ctx, reply)
        return reply

    @wrapped.evaluate()
    def _evaluate(msg: Message, ctx: Context) -> Message:
        return client_app(msg, ctx)

    return wrapped


def replace_payload(reply: Message, mutate: Callable[[Payload, float], Payload]) -> Message:
    payload = record_to_payload(reply.content.array_records[keys.REC_ARRAYS])
    n = float(reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES])
    reply.content[keys.REC_ARRAYS] = payload_to_record(mutate(payload, n))
    return reply


def flip_bit(payload: Payload) -> Payload:
    out = [a.copy() for a in payload]
    out[1][out[1].size // 2] ^= 0x01
    return out


def truncate(payload: Payload) -> Payload:
    return [payload[0], payload[1][: payload[1].size // 2], *payload[2:]]


def random_bytes(payload: Payload) -> Payload:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, a.size, dtype=np.uint8) for a in payload]


def reseal(bundle: ClientBundle, payload: Payload, blobs: list[bytes]) -> Payload:
    """What a faulty key holder would send: new ciphertext bytes under a valid tag."""
    env, _ = Envelope.from_payload(
        payload,
        scheme=Scheme.CKKS,
        fingerprint=bundle.fingerprint,
        mac_key=bundle._mac_key,
        slots=bundle.params.slots,
    )
    return env.to_payload(blobs, mac_key=bundle._mac_key)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    create_keys(out)
    return out


@pytest.fixture(scope="module")
def foreign_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("foreign-keys")
    create_keys(out)
    return out


@pytest.fixture(scope="module")
def bundle(key_dir: Path) -> ClientBundle:
    return load_client_bundle(key_dir)


# ---------------------------------------------------------------------- a. CKKS == plain
def test_ckks_run_matches_the_plaintext_run(key_dir: Path, tmp_path: Path) -> None:
    # Arrange: the quickstart (10 clients, Dirichlet 0.5, MLP), 5 rounds, same seed
    plain_cfg = ExperimentConfig.from_toml(QUICKSTART, ["experiment.rounds=5"])
    ckks_cfg = ckks(plain_cfg, key_dir)

    # Act
    plain = simulate(plain_cfg, verbose=False)
    secure = simulate(ckks_cfg, verbose=False)
    save_simulation(plain, plain_cfg, tmp_path / "plain")
    save_simulation(secure, ckks_cfg, tmp_path / "ckks")  # the operator decrypts

    # Assert: the coordinator held a float model in one run and only ciphertext in the other
    assert all(a.dtype == np.float64 for a in plain.payload)
    assert all(a.dtype == np.uint8 for a in secure.payload)
    assert [r.status for r in secure.summary.rounds] == ["ok"] * 5
    plain_model, _ = load_model(tmp_path / "plain")
    ckks_model, _ = load_model(tmp_path / "ckks")
    plain_state, ckks_state = plain_model.state_dict(), ckks_model.state_dict()
    assert list(plain_state) == list(ckks_state)
    for name, value in plain_state.items():
        diff = float((value.double() - ckks_state[name].double()).abs().max())
        assert diff <= 1e-5, f"{name}: max |plain - ckks| = {diff:.2e}"
    assert round(plain.summary.final["accuracy"], 3) == round(secure.summary.final["accuracy"], 3)
    assert plain.summary.final["accuracy"] >= 0.8


# ---------------------------------------------------------------------- b. coordinator's view
@dataclass
class Recording:
    """A tapped CKKS run plus what the clients encoded and decoded in plaintext."""

    tap: Tap
    outcome: RunOutcome
    summers: list[Any]
    encoded: list[tuple[list[np.ndarray], float]]
    decoded: list[list[np.ndarray]]
    coordinator_dir: Path
    key_dir: Path


class RecordingCodec:
    """Delegates to the real client codec and keeps the plaintext it handled."""

    def __init__(self, inner: Any, recording: Recording) -> None:
        self.inner = inner
        self.name = inner.name
        self.recording = recording

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        self.recording.encoded.append(([np.array(w) for w in weights], float(weight)))
        return self.inner.encode(weights, weight)

    def decode(self, payload: Payload, total_weight: float, shapes: Any) -> list[np.ndarray]:
        out = self.inner.decode(payload, total_weight, shapes)
        self.recording.decoded.append([np.array(a) for a in out])
        return out


@pytest.fixture(scope="module")
def recording(key_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    # The coordinator's key directory holds coordinator.bundle only; clients get the full
    # key directory through their node config, as on real SuperNodes.
    coordinator_dir = tmp_path_factory.mktemp("coordinator-keys")
    shutil.copy2(key_dir / COORDINATOR_BUNDLE, coordinator_dir / COORDINATOR_BUNDLE)
    nodes: list[dict[str, Any]] = [
        {
            keys.NODE_PARTITION_ID: i,
            keys.NODE_NUM_PARTITIONS: NUM_CLIENTS,
            keys.NODE_KEY_DIR: str(key_dir),
        }
        for i in range(NUM_CLIENTS)
    ]
    rec = Recording(Tap(), None, [], [], [], coordinator_dir, key_dir)  # type: ignore[arg-type]
    real_codec_of, real_coordinator_sum = client_module.codec_of, server_module.coordinator_sum

    def codec_of(context: Context, cfg: ExperimentConfig) -> RecordingCodec:
        return RecordingCodec(real_codec_of(context, cfg), rec)

    def coordinator_sum(section: Any, **kwargs: Any) -> Any:
        summer = real_coordinator_sum(section, **kwargs)
        rec.summers.append(summer)
        return summer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "codec_of", codec_of)
        mp.setattr(server_module, "coordinator_sum", coordinator_sum)
        rec.outcome = run(small(coordinator_dir), client_app, tap=rec.tap, node_configs=nodes)
    return rec


def find_any(blob: bytes, needles: Sequence[bytes]) -> list[bytes]:
    """Needles (>= 4 bytes each) occurring anywhere in ``blob``, at any byte offset."""
    heads = np.unique(np.array([int.from_bytes(n[:4], "little") for n in needles], np.uint32))
    found: list[bytes] = []
    for offset in range(4):
        count = (len(blob) - offset) // 4
        words = np.frombuffer(blob, dtype="<u4", count=count, offset=offset)
        idx = np.minimum(np.searchsorted(heads, words), heads.size - 1)
        for pos in np.flatnonzero(heads[idx] == words):
            start = offset + 4 * int(pos)
            found.extend(n for n in needles if blob[start : start + len(n)] == n)
    return found


def needles_of(values: Sequence[np.ndarray], scale: float = 1.0, windows: int = 6) -> list[bytes]:
    """Byte patterns a plaintext copy of ``scale * values`` would contain.

    Windows of 4 consecutive float32 and 2 consecutive float64 values (16 bytes each: a
    chance match in the tapped ciphertext bytes has probability ~1e-29), at positions
    where every value is clearly non-zero, in float32 and float64.
    """
    flat = np.concatenate([np.ravel(v).astype(np.float64) for v in values]) * scale
    quads = np.abs(flat[: flat.size // 4 * 4].reshape(-1, 4))
    usable = [4 * int(q) for q in np.flatnonzero(np.all(quads > 1e-3, axis=1))]
    starts = usable[:: max(1, len(usable) // windows)]
    out: list[bytes] = []
    for i in starts[:windows]:
        out.append(flat[i : i + 4].astype("<f4").tobytes())
        out.append(flat[i : i + 2].astype("<f8").tobytes())
    return out


def test_every_array_the_coordinator_handles_is_a_ciphertext_envelope(
    recording: Recording,
) -> None:
    # Arrange
    bound = small(recording.key_dir).secure_aggregation.update_bound
    payload_messages = [t for t in recording.tap.seen if t.arrays]

    # Act
    kinds = {(t.direction, t.message_type) for t in payload_messages}
    arrays = [a for t in payload_messages for a in t.arrays]

    # Assert: contributions in, aggregates out, and nothing but uint8 envelopes
    assert kinds == {
        ("send", keys.MSG_TRAIN),
        ("receive", keys.MSG_TRAIN),
        ("send", keys.MSG_EVALUATE),
    }
    assert len(recording.tap.payloads("receive", keys.MSG_TRAIN, 1)) == NUM_CLIENTS
    assert all(a.dtype == np.uint8 and a.ndim == 1 for a in arrays)
    for t in payload_messages:
        assert t.arrays[0].tobytes().startswith(MAGIC)
        assert t.arrays[0].size < 1024  # a header, too small to hold a model
        for blob in t.arrays[1:]:  # read as floats, ciphertext bytes are no weight vector
            for dtype in ("<f4", "<f8"):
                view = np.frombuffer(blob.tobytes()[: blob.size // 8 * 8], dtype=dtype)
                assert not (np.all(np.isfinite(view)) and np.max(np.abs(view)) <= bound)
    assert all(a.dtype == np.uint8 for a in recording.outcome.payload)


def test_no_plaintext_update_or_model_appears_in_any_message(recording: Recording) -> None:
    # Arrange: the exact weights every client encoded (w_i, and n_i * w_i as float32/64)
    # and the exact models the clients decoded, as byte patterns
    needles: list[bytes] = []
    for weights, n in recording.encoded:
        needles += needles_of(weights) + needles_of(weights, scale=n)
    for model in recording.decoded:
        needles += needles_of(model)
    blob = b"".join(a.tobytes() for t in recording.tap.seen for a in t.arrays)
    weights, n = recording.encoded[-1]
    plaintext_reply = b"".join(a.tobytes() for a in PlainCodec().encode(weights, n))

    # Act
    leaked = find_any(blob, needles)

    # Assert: the patterns find a plaintext payload, and nothing in the tapped messages
    assert len(recording.encoded) == NUM_CLIENTS * ROUNDS
    # every client decodes each round's aggregate once (evaluate; the next round's train
    # reuses that decode), so every aggregate any client used is among the needles
    assert len(recording.decoded) >= NUM_CLIENTS * ROUNDS
    assert find_any(plaintext_reply, needles)
    assert find_any(b"".join(np.asarray(w, "<f4").tobytes() for w in weights), needles)
    assert leaked == []


def test_non_array_records_carry_only_scalars(recording: Recording) -> None:
    # Arrange
    allowed_metrics = {keys.KEY_NUM_EXAMPLES, keys.KEY_TRAIN_LOSS, keys.KEY_LOSS, keys.KEY_ACCURACY}

    # Act
    metric_keys = {k for t in recording.tap.seen for m in t.metrics.values() for k in m}
    config_values = [v for t in recording.tap.seen for c in t.configs.values() for v in c.values()]

    # Assert: no list-valued entry that could smuggle weights out of the ArrayRecord
    assert metric_keys <= allowed_metrics
    assert all(isinstance(v, bool | int | float | str) for v in config_values)


def test_no_coordinator_side_object_or_file_holds_a_secret_key(recording: Recording) -> None:
    # Arrange: the secret key's own serialization, found in client.bundle (positive control)
    sk_file = recording.coordinator_dir.parent / "secret-key.bin"
    load_client_bundle(recording.key_dir)._context.secret_key().data.save(str(sk_file))
    secret = sk_file.read_bytes()
    probes = [secret[i : i + 64] for i in range(1024, len(secret) - 64, len(secret) // 8)]
    client_file = (recording.key_dir / CLIENT_BUNDLE).read_bytes()

    # Act
    coordinator_files = sorted(p.name for p in recording.coordinator_dir.iterdir())
    coordinator_file = (recording.coordinator_dir / COORDINATOR_BUNDLE).read_bytes()
    reloaded = load_coordinator_bundle(recording.coordinator_dir)

    # Assert: the run's summer, the bundle it loaded and the only file it could read
    assert len(recording.summers) == 1
    summer = recording.summers[0]
    assert isinstance(summer, CkksSum)
    assert summer.is_private() is False
    assert summer._bundle._context.has_secret_key() is False
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(summer._bundle._context, [1.0])  # no key of any kind
    assert reloaded.is_private() is False
    assert coordinator_files == [COORDINATOR_BUNDLE]
    assert all(p in client_file for p in probes)
    assert not any(p in coordinator_file for p in probes)
    assert len(coordinator_file) < 4096 < len(secret)


# ---------------------------------------------------------------------- c. corrupted payloads
def crash(msg: Message, ctx: Context, reply: Message) -> Message:
    raise RuntimeError("left out on purpose")


@pytest.fixture(scope="module")
def without_corrupt_client(key_dir: Path) -> tuple[RunOutcome, Tap]:
    """Reference: the same run with the corrupt client simply missing in that round."""
    tap = Tap()
    outcome = run(small(key_dir), client_with(crash), tap=tap)
    return outcome, tap


Mutation = Callable[[Payload, float], Payload]  # (payload, n_i) -> payload


def under_foreign_key(foreign_key_dir: Path, bundle: ClientBundle) -> Mutation:
    """The same update, encrypted under a second key set."""
    foreign = CkksCodec(load_client_bundle(foreign_key_dir))

    def mutate(payload: Payload, n: float) -> Payload:
        return foreign.encode(decrypt(bundle, payload, n), n)

    return mutate


CORRUPTIONS: dict[str, tuple[Mutation | None, str]] = {
    "bit-flipped": (lambda p, n: flip_bit(p), "CorruptPayloadError: .*authentication tag"),
    "truncated": (lambda p, n: truncate(p), "CorruptPayloadError: .*authentication tag"),
    "emptied": (lambda p, n: [], "CorruptPayloadError: .*must hold a header array"),
    "random bytes": (lambda p, n: random_bytes(p), "CorruptPayloadError: payload magic"),
    "foreign key": (None, "KeyMismatchError: payload key fingerprint .*another key set"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_contribution_is_excluded_with_its_reason(
    case: str,
    key_dir: Path,
    foreign_key_dir: Path,
    bundle: ClientBundle,
    without_corrupt_client: tuple[RunOutcome, Tap],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange
    mutate, reason = CORRUPTIONS[case]
    mutate = mutate or under_foreign_key(foreign_key_dir, bundle)
    app = client_with(lambda msg, ctx, reply: replace_payload(reply, mutate))
    tap = Tap()
    caplog.set_level(logging.WARNING, logger="server.rounds")

    # Act
    outcome = run(small(key_dir), app, tap=tap)

    # Assert: excluded in its round with the reason recorded and logged; the run goes on
    rounds = outcome.summary.rounds
    cid = str(CORRUPT_CLIENT)
    bad = rounds[CORRUPT_ROUND - 1]
    assert [r.status for r in rounds] == ["ok"] * ROUNDS
    assert sorted(bad.trained) == sorted(str(i) for i in range(NUM_CLIENTS) if i != CORRUPT_CLIENT)
    assert list(bad.failures) == [cid]
    assert re.search(reason, bad.failures[cid])
    assert f"round {CORRUPT_ROUND}: client {cid} failed: " in caplog.text
    assert all(cid in r.trained for r in rounds if r is not bad)
    # ... and the round's aggregate is the one without that client's contribution
    ref_outcome, ref_tap = without_corrupt_client
    assert bad.num_examples == ref_outcome.summary.rounds[CORRUPT_ROUND - 1].num_examples
    got, want = tap.candidate(CORRUPT_ROUND), ref_tap.candidate(CORRUPT_ROUND)
    assert got.total_weight == want.total_weight
    round_diff = max_diff(
        decrypt(bundle, got.arrays, got.total_weight),
        decrypt(bundle, want.arrays, want.total_weight),
    )
    final_diff = max_diff(
        decrypt(bundle, outcome.payload, outcome.total_weight),
        decrypt(bundle, ref_outcome.payload, ref_outcome.total_weight),
    )
    assert round_diff <= 1e-5
    assert final_diff <= 1e-5


def authentic_huge_values(bundle: ClientBundle) -> Mutation:
    """Valid tag, wrong values: the sum decrypts far beyond update_bound (as a flipped bit
    in an authentic ciphertext does, ~1e31)."""

    def mutate(payload: Payload, n: float) -> Payload:
        env, _ = Envelope.from_payload(
            payload,
            scheme=Scheme.CKKS,
            fingerprint=bundle.fingerprint,
            mac_key=bundle._mac_key,
            slots=bundle.params.slots,
        )
        slots = bundle.params.slots
        sizes = [min(slots, env.n_values - lo) for lo in range(0, env.n_values, slots)]
        blobs = [ts.ckks_vector(bundle._context, np.full(k, 1e9)).serialize() for k in sizes]
        return reseal(bundle, payload, blobs)

    return mutate


def authentic_garbage(bundle: ClientBundle) -> Mutation:
    """Valid tag over bytes that are no ciphertext: passes check, breaks the sum."""

    def mutate(payload: Payload, n: float) -> Payload:
        blobs = [a.tobytes() for a in payload[1:]]
        blobs[0] = np.random.default_rng(11).integers(0, 256, len(blobs[0]), np.uint8).tobytes()
        return reseal(bundle, payload, blobs)

    return mutate


AUTHENTIC = {
    "decrypts out of bounds": (authentic_huge_values, r"failed the clients' bounds check"),
}


def test_an_authentic_contribution_that_is_no_ciphertext_costs_only_that_client(
    key_dir: Path, bundle: ClientBundle, caplog: pytest.LogCaptureFixture
) -> None:
    # Arrange: a key holder sends bytes that pass the tag but are no ciphertext
    app = client_with(lambda msg, ctx, reply: replace_payload(reply, authentic_garbage(bundle)))
    caplog.set_level(logging.WARNING, logger="server.rounds")

    # Act
    outcome = run(small(key_dir), app)

    # Assert: the sum left that client out, the round went on with the others
    rounds = outcome.summary.rounds
    bad = rounds[CORRUPT_ROUND - 1]
    assert [r.status for r in rounds] == ["ok", "ok", "ok"]
    assert str(CORRUPT_CLIENT) not in bad.trained
    assert len(bad.trained) == NUM_CLIENTS - 1
    assert bad.failures[str(CORRUPT_CLIENT)].startswith("ContributionError: ")
    assert "must be a CKKS vector" in bad.failures[str(CORRUPT_CLIENT)]
    logged = f"round {CORRUPT_ROUND}: client {CORRUPT_CLIENT} failed: ContributionError"
    assert logged in caplog.text


@pytest.mark.parametrize("case", list(AUTHENTIC))
def test_an_authentic_bad_contribution_fails_the_round_and_keeps_the_model(
    case: str, key_dir: Path, bundle: ClientBundle, caplog: pytest.LogCaptureFixture
) -> None:
    # Arrange
    make, reason = AUTHENTIC[case]
    mutate = make(bundle)
    app = client_with(lambda msg, ctx, reply: replace_payload(reply, mutate))
    tap = Tap()
    caplog.set_level(logging.WARNING, logger="server.rounds")

    # Act
    outcome = run(small(key_dir), app, tap=tap)

    # Assert: the contribution passed authentication, the round failed with its reason
    rounds = outcome.summary.rounds
    bad = rounds[CORRUPT_ROUND - 1]
    assert str(CORRUPT_CLIENT) in bad.trained
    assert [r.status for r in rounds] == ["ok", "failed", "ok"]
    assert re.search(reason, bad.reason)
    assert bad.accuracy is None
    assert f"round {CORRUPT_ROUND} failed" in caplog.text
    assert outcome.summary.final["rounds_failed"] == 1
    # ... and the next round trains from the previous model, byte for byte
    before, after = tap.current_model(CORRUPT_ROUND), tap.current_model(CORRUPT_ROUND + 1)
    assert after.total_weight == before.total_weight
    assert [a.tobytes() for a in after.arrays] == [a.tobytes() for a in before.arrays]
    assert (
        max_diff(
            decrypt(bundle, after.arrays, after.total_weight),
            decrypt(bundle, before.arrays, before.total_weight),
        )
        == 0.0
    )


def test_every_client_rejects_an_out_of_bounds_aggregate(
    key_dir: Path, bundle: ClientBundle
) -> None:
    # Arrange
    app = client_with(lambda msg, ctx, reply: replace_payload(reply, authentic_huge_values(bundle)))
    tap = Tap()

    # Act
    run(small(key_dir), app, tap=tap)

    # Assert: the candidate was evaluated by every client and none used it
    replies = [
        t
        for t in tap.seen
        if (t.direction, t.message_type, t.round) == ("receive", keys.MSG_EVALUATE, CORRUPT_ROUND)
    ]
    assert len(replies) == NUM_CLIENTS
    for t in replies:
        assert t.configs[keys.REC_FEDAI][keys.KEY_STATUS] == keys.STATUS_REJECTED
        # the reason names the failure but never quotes decrypted values
        assert t.configs[keys.REC_FEDAI][keys.KEY_REASON] == (
            "aggregate rejected: CorruptPayloadError"
        )
        assert t.metrics == {}
