"""``fedai serve`` and ``fedai infer``: the encrypted inference service and its client."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedai.errors import ConfigError, DataError
from fedai.fileio import atomic_write

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEDAI_TOKEN"  # noqa: S105  (the variable name, not a secret)
SCORES_FILE_MODE = 0o600
"""Mode of the scores file written by ``fedai infer``."""


def register(subparsers: Any) -> None:
    """Add the ``serve`` and ``infer`` subcommands."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a trained logreg/mlp model for encrypted inference over gRPC",
        description="Serve a model saved by fedai (model.pt + model.json) on encrypted "
        "inputs. Binds 127.0.0.1 unless --host says otherwise.",
    )
    serve.add_argument("--model", required=True, help="model directory or its model.pt")
    serve.add_argument("--port", type=int, required=True, help="TCP port (0: OS chooses)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--tokens", help="tokens file: '<token-id> <token>' per line; must be mode 0600"
    )
    serve.add_argument(
        "--audit-log",
        help="append-only JSONL audit log of every request (created or tightened to 0600)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate (with --tls-key) to serve over TLS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--max-rows", type=int, default=4096, help="rows per request")
    serve.add_argument(
        "--max-request-mib", type=int, default=64, help="largest request in MiB (default 64)"
    )
    serve.set_defaults(func=run_serve)

    infer = subparsers.add_parser(
        "infer",
        help="encrypted inference against a fedai server",
        description="Encrypt the rows of a CSV/NPZ file under a fresh CKKS key, query the "
        f"server, decrypt. The token comes from --token-file, --token or ${TOKEN_ENV}.",
    )
    infer.add_argument("--server", required=True, help="HOST:PORT")
    infer.add_argument("--input", required=True, help="features: .csv (numeric) or .npz")
    infer.add_argument(
        "--out", required=True, help="output .csv or .npz (scores, predictions; mode 0600)"
    )
    infer.add_argument("--token", help=f"bearer token (prefer --token-file or ${TOKEN_ENV})")
    infer.add_argument("--token-file", help="file whose first line is the bearer token")
    infer.add_argument("--tls-ca", help="PEM CA certificate to verify a TLS server")
    infer.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    infer.set_defaults(func=run_infer)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    from fedai.inference.holder import ModelHolder
    from fedai.inference.service import (
        AuditLog,
        ServiceLimits,
        TlsFiles,
        TokenStore,
        create_server,
    )

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together; got only one")
    tls = TlsFiles(cert=Path(args.tls_cert), key=Path(args.tls_key)) if args.tls_cert else None
    limits = ServiceLimits(max_rows=args.max_rows, max_request_bytes=args.max_request_mib * 2**20)
    tokens = TokenStore.from_file(args.tokens) if args.tokens else None
    audit = AuditLog(args.audit_log)
    holder = ModelHolder.from_path(args.model)
    server, port = create_server(
        holder, host=args.host, port=args.port, tokens=tokens, audit=audit, limits=limits, tls=tls
    )
    print(f"fedai serve: listening on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=1.0)
    return 0


def run_infer(args: argparse.Namespace) -> int:
    """Encrypt the input rows, query the server, write decrypted scores."""
    from fedai.inference.client import InferenceClient

    x = read_features(Path(args.input))
    token = _token(args)
    with InferenceClient(
        args.server, token=token, tls_ca=args.tls_ca, timeout=args.timeout
    ) as client:
        scores = client.predict(x)
    write_scores(Path(args.out), scores)
    print(f"fedai infer: {scores.shape[0]} rows -> {args.out}")
    return 0


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").split()
        except OSError as err:
            raise ConfigError(f"--token-file must be readable: {err}") from err
        if not lines:
            raise ConfigError(f"--token-file {args.token_file!r} must hold a token; got nothing")
        return lines[0]
    return args.token or os.environ.get(TOKEN_ENV) or None


def read_features(path: Path) -> np.ndarray:
    """Read a 2-D float array from a CSV (optional header) or NPZ (array ``x`` or the only one).

    Raises:
        DataError: missing file, unknown suffix, non-numeric or non-finite values.
    """
    if not path.is_file():
        raise DataError(f"input file {str(path)!r} must exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            names = list(data.keys())
            key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise DataError(f"{path} must hold an array 'x' or exactly one array; got {names}")
            x = np.asarray(data[key], dtype=np.float64)
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
        if rows and not _numeric(rows[0]):
            rows = rows[1:]
        try:
            x = np.asarray([[float(v) for v in r] for r in rows], dtype=np.float64)
        except ValueError as err:
            raise DataError(f"{path} must hold only numbers after the header: {err}") from err
    else:
        raise DataError(f"input file must end in .csv or .npz; got {path.suffix!r}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{path} must hold a non-empty 2-D table; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path} must hold finite numbers; got NaN or inf")
    return x


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def predictions(scores: np.ndarray) -> np.ndarray:
    """Class predictions: argmax of the scores, or ``score > 0`` for a single score."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(np.int64)
    return np.asarray(np.argmax(scores, axis=1), dtype=np.int64)


def write_scores(path: Path, scores: np.ndarray) -> None:
    """Write scores and predictions to ``.npz`` (``scores``, ``predictions``) or ``.csv``.

    The file is written atomically with mode 0600 (whatever the umask): the scores are the
    querier's private results.

    Raises:
        DataError: ``path`` ends in neither ``.csv`` nor ``.npz``, or cannot be written.
    """
    pred = predictions(scores)
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, scores=scores, predictions=pred)
        data: bytes | str = buffer.getvalue()
    elif path.suffix == ".csv":
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["prediction", *[f"score_{k}" for k in range(scores.shape[1])]])
        for p, row in zip(pred, scores, strict=True):
            writer.writerow([int(p), *[repr(float(v)) for v in row]])
        data = text.getvalue()
    else:
        raise DataError(f"--out must end in .csv or .npz; got {path.suffix!r}")
    try:
        atomic_write(path, data, mode=SCORES_FILE_MODE)
    except OSError as err:
        raise DataError(f"--out {str(path)!r} must be writable: {err}") from err


__all__ = ["predictions", "read_features", "register", "run_infer", "run_serve", "write_scores"]
