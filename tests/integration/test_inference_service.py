# ruff: noqa: S105, S106  (test tokens are fixtures, not secrets)
"""Encrypted inference end to end: real TenSEAL, real gRPC on 127.0.0.1, real CLI."""

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fedai import cli
from fedai.inference import CkksProfile, EncryptedBatch, Layout, ModelHolder, Querier
from fedai.inference.client import InferenceClient, RemoteInferenceError
from fedai.inference.querier import encrypted_predict
from fedai.inference.service import AuditLog, ServiceLimits, TokenStore, create_server
from fedai.models import ModelSpec, build_model, save_model

pytestmark = pytest.mark.integration

TOKEN = "valid-token-0123456789abcdef"
MAX_REQUEST_BYTES = 4 * 2**20


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), y_train, scaler.transform(x_test)


def _train(spec, x, y, steps=300):
    torch.set_num_threads(1)
    model = build_model(spec, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def logreg_dir(digits, tmp_path_factory):
    x, y, _ = digits
    spec = ModelSpec(name="logreg", input_shape=(64,), num_classes=10)
    out = tmp_path_factory.mktemp("logreg")
    save_model(out, _train(spec, x, y), spec)
    return out


@pytest.fixture(scope="module")
def mlp_dir(digits, tmp_path_factory):
    x, y, _ = digits
    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=32)
    out = tmp_path_factory.mktemp("mlp")
    save_model(out, _train(spec, x, y), spec)
    return out


@pytest.fixture(scope="module")
def server(logreg_dir, tmp_path_factory):
    audit_path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    holder = ModelHolder.from_path(logreg_dir)
    srv, port = create_server(
        holder,
        port=0,
        tokens=TokenStore({"alice": TOKEN}),
        audit=AuditLog(audit_path),
        limits=ServiceLimits(max_rows=4096, max_request_bytes=MAX_REQUEST_BYTES),
    )
    try:
        yield holder, f"127.0.0.1:{port}", audit_path
    finally:
        srv.stop(grace=None)


def test_digits_logreg_encrypted_matches_plaintext_on_whole_test_split(server, digits):
    # Arrange
    holder, target, _ = server
    _, _, x_test = digits
    plain = holder.predict_plain(x_test)
    # Act
    with InferenceClient(target, token=TOKEN) as client:
        remote = client.predict(x_test)
    local = encrypted_predict(Querier(), holder.evaluate, holder.infos, x_test)
    # Assert
    assert x_test.shape[0] == 360
    assert np.array_equal(remote.argmax(1), plain.argmax(1))
    assert np.abs(remote - plain).max() <= 1e-3
    assert np.array_equal(remote.argmax(1), local.argmax(1))
    assert np.abs(remote - local).max() <= 1e-3


def test_digits_mlp_per_layer_round_trips_agree_with_plaintext(mlp_dir, digits):
    # Arrange
    holder = ModelHolder.from_path(mlp_dir)
    _, _, x_test = digits
    # Act
    encrypted = encrypted_predict(Querier(), holder.evaluate, holder.infos, x_test)
    # Assert
    agreement = np.mean(encrypted.argmax(1) == holder.predict_plain(x_test).argmax(1))
    assert agreement >= 0.995


def _bad_requests(target, x):
    """(name, call, expected status, message fragment) for each request the server refuses."""
    q = Querier()
    ok_batch = q.encrypt(x[:2], layout=Layout.ROWS)
    narrow = q.encrypt(x[:2, :30], layout=Layout.ROWS)
    other = Querier(profile=CkksProfile(coeff_mod_bit_sizes=(60, 40, 60)))
    other_batch = other.encrypt(x[:2], layout=Layout.ROWS)
    garbage = EncryptedBatch(
        layout=Layout.ROWS, rows=2, features=64, ciphertexts=(b"\x07not a ciphertext" * 50,)
    )
    oversize = EncryptedBatch(
        layout=Layout.ROWS, rows=2, features=64, ciphertexts=ok_batch.ciphertexts * 14
    )
    too_many = EncryptedBatch(
        layout=Layout.ROWS, rows=5000, features=64, ciphertexts=ok_batch.ciphertexts
    )
    private = q._context.serialize(save_secret_key=True)
    good = InferenceClient(target, token=TOKEN)
    return good, [
        (
            "no token",
            lambda: InferenceClient(target).evaluate(0, q.public_context(), ok_batch),
            "UNAUTHENTICATED",
            "authorization metadata must be 'Bearer <token>'; got none",
        ),
        (
            "wrong token",
            lambda: InferenceClient(target, token="wrong-token-0123456789").evaluate(
                0, q.public_context(), ok_batch
            ),
            "PERMISSION_DENIED",
            "bearer token must be a known token",
        ),
        (
            "feature count",
            lambda: good.evaluate(0, q.public_context(), narrow),
            "INVALID_ARGUMENT",
            "layer 0 expects 64 features per row; got 30",
        ),
        (
            "parameters",
            lambda: good.evaluate(0, other.public_context(), other_batch),
            "FAILED_PRECONDITION",
            r"coeff_mod_bit_sizes must be \[60, 40, 40, 60\]; "
            r"got \[60, 40, 60\]",
        ),
        (
            "garbage ciphertext",
            lambda: good.evaluate(0, q.public_context(), garbage),
            "INVALID_ARGUMENT",
            "ciphertext 0 must be a CKKS vector",
        ),
        (
            "garbage context",
            lambda: good.evaluate(0, b"\x00" * 300, ok_batch),
            "INVALID_ARGUMENT",
            "context must be a serialized TenSEAL context",
        ),
        (
            "secret key",
            lambda: good.evaluate(0, private, ok_batch),
            "INVALID_ARGUMENT",
            "context must be public",
        ),
        (
            "oversize",
            lambda: good.evaluate(0, q.public_context(), oversize),
            "RESOURCE_EXHAUSTED",
            f"request must be <= {MAX_REQUEST_BYTES} bytes",
        ),
        (
            "too many rows",
            lambda: good.evaluate(0, q.public_context(), too_many),
            "RESOURCE_EXHAUSTED",
            "rows must be <= 4096 per request; got 5000",
        ),
    ]


def test_bad_requests_rejected_while_valid_client_is_served(server, digits):
    # Arrange
    holder, target, _ = server
    _, _, x_test = digits
    x = x_test[:20]
    expected = holder.predict_plain(x).argmax(1)
    results = []

    def valid_client():
        with InferenceClient(target, token=TOKEN) as client:
            for _ in range(3):
                results.append(client.predict(x).argmax(1))

    good, bad = _bad_requests(target, x_test)
    worker = threading.Thread(target=valid_client)
    # Act / Assert: every bad request gets its status while the worker keeps being served.
    worker.start()
    for _name, call, status, message in bad:
        with pytest.raises(RemoteInferenceError, match=f"{status}: .*{message}"):
            call()
    worker.join(timeout=600)
    good.close()
    assert not worker.is_alive()
    assert len(results) == 3
    assert all(np.array_equal(r, expected) for r in results)
    with InferenceClient(target, token=TOKEN) as client:
        assert client.health() == "SERVING"


def test_audit_log_records_outcomes_and_no_data(server, digits):
    # Arrange
    _, target, audit_path = server
    _, _, x_test = digits
    # Act
    with InferenceClient(target, token=TOKEN) as client:
        client.predict(x_test[:3])
    with pytest.raises(RemoteInferenceError, match="PERMISSION_DENIED"):
        InferenceClient(target, token="another-wrong-token-000").info()
    # Assert
    text = audit_path.read_text(encoding="utf-8")
    entries = [json.loads(line) for line in text.splitlines()]
    last = entries[-1]
    assert {"time", "request_id", "event", "method", "token_id", "peer"} <= set(last)
    assert (last["event"], last["outcome"], last["status"]) == (
        "finished",
        "rejected",
        "PERMISSION_DENIED",
    )
    assert entries[-2]["request_id"] == last["request_id"]
    assert entries[-2]["event"] == "received"
    assert any(
        e["event"] == "finished"
        and e["outcome"] == "ok"
        and e.get("rows") == 3
        and e["token_id"] == "alice"
        for e in entries
    )
    assert TOKEN not in text
    assert "another-wrong-token" not in text
    assert max(len(line) for line in text.splitlines()) < 1000  # no ciphertext or context
    assert audit_path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def umask_022():
    """Run under umask 022 (inherited by subprocesses), so 0600 proves fedai forced it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _fedai_serve(*args, startup_timeout=120.0):
    """Run ``fedai serve ARGS --port 0`` and yield ``(process, "127.0.0.1:PORT")``.

    Waits at most ``startup_timeout`` seconds for the listening line; always stops the
    process it started (terminate, then kill) by its own handle.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedai.cli", "serve", "--port", "0", *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], startup_timeout)
        assert ready, f"fedai serve printed nothing within {startup_timeout} s"
        line = proc.stdout.readline()
        assert line.startswith("fedai serve: listening on 127.0.0.1:"), line
        yield proc, f"127.0.0.1:{line.strip().rsplit(':', 1)[1]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()


def _audited_calls(path, count, timeout=10.0):
    """Wait (bounded) for ``count`` finished calls in the audit log; return {id: entries}.

    A request gRPC drops as too large is answered by gRPC before the handler audits it.
    """
    deadline = time.monotonic() + timeout
    while True:
        calls = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            calls.setdefault(entry["request_id"], []).append(entry)
        if sum(c[-1]["event"] == "finished" for c in calls.values()) >= count:
            return calls
        assert time.monotonic() < deadline, f"{count} finished calls not audited: {calls}"
        time.sleep(0.05)


@pytest.mark.usefixtures("umask_022")
def test_cli_serve_audits_health_and_over_limit_requests(logreg_dir, tmp_path):
    # Arrange: 1 MiB limit, so gRPC's own limit is 2 MiB.
    tokens = tmp_path / "tokens"
    tokens.write_text(f"cli {TOKEN}\n", encoding="utf-8")
    tokens.chmod(0o600)
    audit_path = tmp_path / "audit.jsonl"
    context = Querier().public_context()

    def oversize(size):
        return EncryptedBatch(layout=Layout.ROWS, rows=1, features=64, ciphertexts=(b"c" * size,))

    with _fedai_serve(
        "--model", logreg_dir, "--tokens", tokens, "--audit-log", audit_path, "--max-request-mib", 1
    ) as (_, target):
        # Act
        with InferenceClient(target, token=TOKEN, timeout=30) as client:
            health = client.health()
            with pytest.raises(RemoteInferenceError, match=r"RESOURCE_EXHAUSTED: request must be"):
                client.evaluate(0, context, oversize(3 * 2**19))
            with pytest.raises(
                RemoteInferenceError, match=r"RESOURCE_EXHAUSTED: .*larger than max"
            ):
                client.evaluate(0, context, oversize(3 * 2**20))
        calls = _audited_calls(audit_path, 3)
    # Assert
    assert health == "SERVING"
    assert audit_path.stat().st_mode & 0o777 == 0o600
    finished = sorted((c[-1] for c in calls.values()), key=lambda e: e["outcome"])
    assert all([e["event"] for e in c] == ["received", "finished"] for c in calls.values())
    assert [(e["method"], e["outcome"], e["status"]) for e in finished] == [
        ("Evaluate", "dropped", "RESOURCE_EXHAUSTED"),
        ("Health", "ok", "OK"),
        ("Evaluate", "rejected", "RESOURCE_EXHAUSTED"),
    ]
    assert finished[2]["bytes"] > 2**20
    assert all(e["token_id"] == "cli" for e in finished)


def test_tokens_file_readable_by_others_stops_fedai_serve(logreg_dir, tmp_path, capsys):
    # Arrange
    tokens = tmp_path / "tokens"
    tokens.write_text(f"cli {TOKEN}\n", encoding="utf-8")
    tokens.chmod(0o644)
    # Act
    code = cli.main(["serve", "--model", str(logreg_dir), "--port", "0", "--tokens", str(tokens)])
    # Assert
    assert code == 2  # ConfigError: a usage error
    assert "must not be readable or writable by group or others (chmod 600); got 0644" in (
        capsys.readouterr().err
    )


CRASHING_SERVER = """
import os, sys
from fedai.inference.encoding import DEFAULT_PROFILE, Activation, LayerInfo
from fedai.inference.service import AuditLog, create_server

class CrashingHolder:
    layers = (None,)
    infos = (LayerInfo(in_features=64, out_features=10, activation=Activation.NONE),)
    profile = DEFAULT_PROFILE

    def evaluate(self, layer, context, batch):
        os._exit(17)  # what a native crash in the holder looks like from outside

server, port = create_server(CrashingHolder(), audit=AuditLog(sys.argv[1]))
print(port, flush=True)
server.wait_for_termination(timeout=120)
"""


def test_request_that_kills_the_server_is_on_record(tmp_path):
    # Arrange
    audit_path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SERVER, str(audit_path)], stdout=subprocess.PIPE, text=True
    )
    batch = EncryptedBatch(layout=Layout.ROWS, rows=2, features=64, ciphertexts=(b"ct",))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "crashing server did not start"
        port = proc.stdout.readline().strip()
        # Act
        with (
            InferenceClient(f"127.0.0.1:{port}", timeout=30) as client,
            pytest.raises(RemoteInferenceError, match="UNAVAILABLE"),
        ):
            client.evaluate(3, b"context", batch)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    # Assert
    (entry,) = [json.loads(line) for line in audit_path.read_text(encoding="utf-8").splitlines()]
    assert code == 17
    assert (entry["event"], entry["method"], entry["layer"], entry["rows"]) == (
        "received",
        "Evaluate",
        3,
        2,
    )
    assert entry["context_bytes"] == len(b"context")


@pytest.mark.usefixtures("umask_022")
def test_cli_serve_and_infer_over_loopback(mlp_dir, digits, tmp_path, capsys):
    # Arrange
    _, _, x_test = digits
    x = x_test[:40]
    np.savez(tmp_path / "in.npz", x=x)
    (tmp_path / "tokens").write_text(f"cli {TOKEN}\n", encoding="utf-8")
    (tmp_path / "tokens").chmod(0o600)
    (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
    serve_args = ("--model", mlp_dir, "--tokens", tmp_path / "tokens")
    with _fedai_serve(*serve_args, "--audit-log", tmp_path / "audit.jsonl") as (_, target):
        # Act
        code = cli.main(
            [
                "infer",
                "--server",
                target,
                "--input",
                str(tmp_path / "in.npz"),
                "--out",
                str(tmp_path / "out.npz"),
                "--token-file",
                str(tmp_path / "token"),
            ]
        )
        answered_err = capsys.readouterr().err
        refused = cli.main(
            [
                "infer",
                "--server",
                target,
                "--input",
                str(tmp_path / "in.npz"),
                "--out",
                str(tmp_path / "bad.npz"),
            ]
        )
        refused_err = capsys.readouterr().err
    # Assert
    plain = ModelHolder.from_path(mlp_dir).predict_plain(x)
    out = np.load(tmp_path / "out.npz")
    assert code == 0
    assert refused == 2  # no token for a server that needs one: the user's to fix
    assert f"error: the server at {target} requires a bearer token; got none" in refused_err
    assert "fedai infer: [1/3] layer 1 of 3, rows 1-40 of 40" in answered_err
    assert np.mean(out["predictions"] == plain.argmax(1)) >= 0.975
    assert np.abs(out["scores"] - plain).max() <= 1e-2
    assert (tmp_path / "out.npz").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600
