# ruff: noqa: S105  (token ids are fixtures, not secrets)
"""Tokens, limits, CLI file helpers, and the servicer's audit trail over loopback gRPC.

The servicer tests run a real gRPC server on 127.0.0.1 around a stub model holder, so they
take milliseconds and need no TenSEAL key.
"""

import json
import re
import time

import grpc
import numpy as np
import pytest

from fedai.errors import ConfigError, DataError, InferenceError
from fedai.inference.cli import predictions, read_features, write_scores
from fedai.inference.client import InferenceClient, RemoteInferenceError
from fedai.inference.encoding import (
    DEFAULT_PROFILE,
    Activation,
    EncryptedBatch,
    EncryptedScores,
    LayerInfo,
    Layout,
)
from fedai.inference.service import AuditLog, ServiceLimits, TokenStore, create_server

ALICE = "alice-token-0123456789"
BOB = "bob-token-abcdefghijkl"
MIB = 2**20


def _private_file(path, text):
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_tokens_file_identifies_token_ids(tmp_path):
    # Arrange
    path = _private_file(tmp_path / "tokens", f"# comment\nalice {ALICE}\n\nbob {BOB}\n")
    # Act
    store = TokenStore.from_file(path)
    # Assert
    assert store.identify(ALICE) == "alice"
    assert store.identify(BOB) == "bob"
    assert store.identify("alice-token-0123456788") is None
    assert store.identify("") is None


def test_tokens_file_problems_reported_together(tmp_path):
    path = _private_file(tmp_path / "tokens", f"alice {ALICE}\nalice {BOB}\nbroken\n")
    with pytest.raises(ConfigError, match=r"must be unique.*must be '<token-id> <token>'"):
        TokenStore.from_file(path)


def test_short_token_refused():
    with pytest.raises(ConfigError, match="token 'x' must be >= 16 characters; got 5"):
        TokenStore({"x": "short"})


def test_missing_tokens_file_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"tokens file .* must be readable"):
        TokenStore.from_file(tmp_path / "absent")


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_tokens_file_readable_or_writable_by_others_refused(tmp_path, mode):
    # Arrange
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\n", encoding="utf-8")
    path.chmod(mode)
    # Act / Assert
    with pytest.raises(
        ConfigError,
        match=rf"tokens file '{re.escape(str(path))}' must not be readable or writable by "
        rf"group or others \(chmod 600\); got {mode:04o}",
    ):
        TokenStore.from_file(path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_tokens_file_private_to_its_owner_accepted(tmp_path, mode):
    path = _private_file(tmp_path / "tokens", f"alice {ALICE}\n")
    path.chmod(mode)
    assert TokenStore.from_file(path).identify(ALICE) == "alice"


def test_limits_validated():
    with pytest.raises(ConfigError, match="max_rows must be >= 1; got 0"):
        ServiceLimits(max_rows=0)


def test_read_features_csv_with_header_and_npz(tmp_path):
    # Arrange
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,4.5\n", encoding="utf-8")
    np.savez(tmp_path / "x.npz", x=np.eye(2))
    # Act
    csv_x = read_features(tmp_path / "x.csv")
    npz_x = read_features(tmp_path / "x.npz")
    # Assert
    np.testing.assert_array_equal(csv_x, [[1, 2], [3, 4.5]])
    np.testing.assert_array_equal(npz_x, np.eye(2))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("x.csv", "1,2\n3,oops\n", "must hold only numbers"),
        ("x.csv", "1,2\nnan,1\n", "must hold finite numbers"),
        ("x.txt", "1,2\n", r"must end in .csv or .npz; got '.txt'"),
    ],
)
def test_read_features_bad_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_features(tmp_path / name)


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("name", ["scores.npz", "scores.csv"])
def test_write_scores_is_0600_even_over_an_existing_0644_file(tmp_path, name):
    # Arrange
    path = tmp_path / name
    path.write_text("old", encoding="utf-8")
    path.chmod(0o644)
    # Act
    write_scores(path, np.array([[0.1, 2.0]]))
    # Assert
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() != b"old"


def test_write_scores_npz_round_trips(tmp_path):
    scores = np.array([[0.1, 2.0], [3.0, -1.0]])
    write_scores(tmp_path / "out.npz", scores)
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["scores"], scores)
        np.testing.assert_array_equal(out["predictions"], [1, 0])


def test_write_scores_csv_and_predictions(tmp_path):
    scores = np.array([[0.1, 2.0], [3.0, -1.0]])
    write_scores(tmp_path / "out.csv", scores)
    lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "prediction,score_0,score_1"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "0"]
    np.testing.assert_array_equal(predictions(np.array([[0.5], [-0.5]])), [1, 0])


# --------------------------------------------------------------------- servicer audit trail


class StubHolder:
    """Stands in for ModelHolder; ``evaluate`` snapshots the audit log, then runs ``action``."""

    layers = (None,)
    infos = (LayerInfo(in_features=2, out_features=1, activation=Activation.NONE),)
    profile = DEFAULT_PROFILE

    def __init__(self, audit_path, action):
        self.audit_path = audit_path
        self.action = action
        self.audit_when_entered = None

    def evaluate(self, layer, context, batch):
        self.audit_when_entered = _entries(self.audit_path)
        return self.action(batch)


def _entries(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _reply(batch):
    return EncryptedScores(
        layout=batch.layout, rows=batch.rows, features=1, outputs=1, ciphertexts=(b"r",)
    )


def _batch(ciphertext_bytes=16, rows=1):
    return EncryptedBatch(
        layout=Layout.ROWS, rows=rows, features=2, ciphertexts=(b"c" * ciphertext_bytes,)
    )


@pytest.fixture
def serve(tmp_path):
    """Start a loopback server around a StubHolder; yields (holder, target, audit path)."""
    servers = []

    def start(action=_reply):
        audit_path = tmp_path / "audit.jsonl"
        holder = StubHolder(audit_path, action)
        server, port = create_server(
            holder,
            tokens=TokenStore({"alice": ALICE}),
            audit=AuditLog(audit_path),
            limits=ServiceLimits(max_rows=8, max_request_bytes=MIB),
            max_workers=2,
        )
        servers.append(server)
        return holder, f"127.0.0.1:{port}", audit_path

    yield start
    for server in servers:
        server.stop(grace=None)


def _pairs(entries):
    """Group audit entries by request id: {id: [received, finished]} in log order."""
    calls = {}
    for entry in entries:
        calls.setdefault(entry["request_id"], []).append(entry)
    return list(calls.values())


def test_evaluate_is_audited_as_received_before_the_holder_is_entered(serve):
    # Arrange
    holder, target, audit_path = serve()
    # Act
    with InferenceClient(target, token=ALICE, timeout=10) as client:
        client.evaluate(0, b"ctx" * 10, _batch())
    # Assert
    (seen,) = holder.audit_when_entered
    assert seen["event"] == "received"
    assert seen["method"] == "Evaluate"
    assert seen["token_id"] == "alice"
    assert seen["peer"].startswith("ipv4:127.0.0.1:")
    assert {
        "layer": 0,
        "rows": 1,
        "features": 2,
        "ciphertexts": 1,
        "context_bytes": 30,
    }.items() <= seen.items()
    ((received, finished),) = _pairs(_entries(audit_path))
    assert received == seen
    assert finished["event"] == "finished"
    assert finished["request_id"] == seen["request_id"]
    assert (finished["outcome"], finished["status"]) == ("ok", "OK")
    assert finished["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("failure", "status", "outcome"),
    [
        (RuntimeError("native crash stand-in"), "INTERNAL", "error"),
        (InferenceError("ciphertext 0 must be a CKKS vector"), "INVALID_ARGUMENT", "rejected"),
    ],
)
def test_a_failing_evaluate_is_on_record_before_and_after(serve, failure, status, outcome):
    # Arrange
    def fail(batch):
        raise failure

    holder, target, audit_path = serve(fail)
    # Act
    with (
        InferenceClient(target, token=ALICE, timeout=10) as client,
        pytest.raises(RemoteInferenceError, match=status),
    ):
        client.evaluate(0, b"ctx", _batch())
    # Assert
    assert [e["event"] for e in holder.audit_when_entered] == ["received"]
    ((received, finished),) = _pairs(_entries(audit_path))
    assert received["event"] == "received"
    assert (finished["outcome"], finished["status"]) == (outcome, status)


def test_health_is_audited_with_or_without_a_token(serve):
    # Arrange
    _, target, audit_path = serve()
    # Act
    with InferenceClient(target, timeout=10) as anonymous:
        assert anonymous.health() == "SERVING"
    with InferenceClient(target, token=ALICE, timeout=10) as alice:
        assert alice.health() == "SERVING"
    # Assert
    calls = _pairs(_entries(audit_path))
    assert [[e["event"] for e in call] for call in calls] == [["received", "finished"]] * 2
    assert [call[1]["token_id"] for call in calls] == ["-", "alice"]
    assert all(call[1]["method"] == "Health" and call[1]["status"] == "OK" for call in calls)


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, "UNAUTHENTICATED"), ("wrong-token-0123456789", "PERMISSION_DENIED")],
)
def test_unauthenticated_calls_are_audited_and_their_message_is_not_read(serve, token, status):
    # Arrange
    holder, target, audit_path = serve()
    # Act
    with (
        InferenceClient(target, token=token, timeout=10) as client,
        pytest.raises(RemoteInferenceError, match=status),
    ):
        client.evaluate(0, b"ctx", _batch())
    # Assert
    ((received, finished),) = _pairs(_entries(audit_path))
    assert (received["method"], received["token_id"]) == ("Evaluate", "-")
    assert "bytes" not in received
    assert (finished["outcome"], finished["status"]) == ("rejected", status)
    assert holder.audit_when_entered is None
    assert "wrong-token" not in audit_path.read_text(encoding="utf-8")


def test_request_over_our_limit_is_refused_with_its_size_and_audited(serve):
    # Arrange: above max_request_bytes (1 MiB) but within gRPC's limit (2 MiB).
    holder, target, audit_path = serve()
    # Act
    with (
        InferenceClient(target, token=ALICE, timeout=10) as client,
        pytest.raises(
            RemoteInferenceError, match=rf"RESOURCE_EXHAUSTED: request must be <= {MIB} bytes; got"
        ),
    ):
        client.evaluate(0, b"ctx", _batch(ciphertext_bytes=MIB + MIB // 2))
    # Assert
    ((received, finished),) = _pairs(_entries(audit_path))
    assert received["bytes"] > MIB
    assert "rows" not in received  # refused before decoding
    assert (finished["outcome"], finished["status"]) == ("rejected", "RESOURCE_EXHAUSTED")
    assert holder.audit_when_entered is None


def _finished_calls(path, count, timeout=10.0):
    """Wait (bounded) until ``count`` calls have finished entries; return them by method.

    gRPC answers a request it drops itself before the handler has written its entries.
    """
    deadline = time.monotonic() + timeout
    while True:
        calls = _pairs(_entries(path))
        if sum(call[-1]["event"] == "finished" for call in calls) >= count:
            return {call[0]["method"]: call for call in calls}
        assert time.monotonic() < deadline, f"{count} finished calls not audited: {calls}"
        time.sleep(0.02)


def test_request_grpc_drops_as_too_large_is_audited_as_dropped(serve):
    # Arrange: above gRPC's own limit (max_request_bytes + 1 MiB), so it is never read.
    holder, target, audit_path = serve()
    # Act
    with InferenceClient(target, token=ALICE, timeout=10) as client:
        with pytest.raises(RemoteInferenceError, match="RESOURCE_EXHAUSTED"):
            client.evaluate(0, b"ctx", _batch(ciphertext_bytes=3 * MIB))
        assert client.health() == "SERVING"
    # Assert
    calls = _finished_calls(audit_path, 2)
    received, finished = calls["Evaluate"]
    assert (received["event"], received["token_id"]) == ("received", "alice")
    assert "bytes" not in received
    assert (finished["outcome"], finished["status"]) == ("dropped", "RESOURCE_EXHAUSTED")
    assert f"must be <= {2 * MIB} bytes to reach the service" in finished["reason"]
    assert calls["Health"][1]["status"] == "OK"
    assert holder.audit_when_entered is None


def test_undecodable_request_is_refused_and_audited(serve):
    # Arrange
    _, target, audit_path = serve()
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/fedai.inference.v1.EncryptedInference/Evaluate")
    # Act
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {ALICE}"),), timeout=10)
    channel.close()
    # Assert
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    ((received, finished),) = _pairs(_entries(audit_path))
    assert received["bytes"] == 3
    assert (
        finished["reason"] == "request must be a serialized EvaluateRequest; got undecodable bytes"
    )


def test_unwritable_audit_log_refuses_to_serve(serve):
    # Arrange
    holder, target, audit_path = serve()
    audit_path.unlink()
    audit_path.mkdir()  # appending to a directory fails
    # Act / Assert
    with (
        InferenceClient(target, token=ALICE, timeout=10) as client,
        pytest.raises(RemoteInferenceError, match="UNAVAILABLE: audit log must be writable"),
    ):
        client.evaluate(0, b"ctx", _batch())
    assert holder.audit_when_entered is None


def test_model_info_and_too_many_rows_are_audited(serve):
    # Arrange
    holder, target, audit_path = serve()
    # Act
    with InferenceClient(target, token=ALICE, timeout=10) as client:
        info = client.info()
        with pytest.raises(RemoteInferenceError, match="rows must be <= 8 per request; got 9"):
            client.evaluate(0, b"ctx", _batch(rows=9))
    # Assert
    assert info.max_request_bytes == MIB
    (model_info, too_many) = _pairs(_entries(audit_path))
    assert [(e["method"], e["event"]) for e in model_info] == [
        ("ModelInfo", "received"),
        ("ModelInfo", "finished"),
    ]
    assert model_info[1]["status"] == "OK"
    assert too_many[0]["rows"] == 9
    assert (too_many[1]["outcome"], too_many[1]["status"]) == ("rejected", "RESOURCE_EXHAUSTED")
    assert holder.audit_when_entered is None
