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

from fedai import progress
from fedai.errors import EXIT_OK, ConfigError, DataError, ModelError
from fedai.fileio import atomic_write

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEDAI_TOKEN"  # noqa: S105  (the variable name, not a secret)
SCORES_FILE_MODE = 0o600
"""Mode of the scores file written by ``fedai infer``."""
MAX_PORT = 65535
SCORE_SUFFIXES = (".csv", ".npz")


def serve_port(text: str) -> int:
    """``--port`` of ``fedai serve``: an integer in 0-65535 (0: the OS chooses)."""
    return _port(text, low=0, what="an integer in 0-65535 (0: the OS picks a free port)")


def _port(text: str, *, low: int, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not low <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return port


def server_address(text: str) -> str:
    """``--server`` of ``fedai infer``: ``HOST:PORT`` or ``[IPv6]:PORT``, port 1-65535.

    A bare host is refused: gRPC would silently try port 443.
    """
    host, sep, port_text = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not host or (":" in host and not bracketed):
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT (e.g. 127.0.0.1:50051, [::1]:50051); got {text!r}"
        )
    port = _port(port_text, low=1, what=f"HOST:PORT with a port in 1-{MAX_PORT}")
    return f"{host}:{port}"


def register(subparsers: Any) -> None:
    """Add the ``serve`` and ``infer`` subcommands."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a trained logreg/mlp model for encrypted inference over gRPC",
        description="Serve a model saved by fedai (model.pt + model.json) on encrypted "
        "inputs. Binds 127.0.0.1 unless --host says otherwise. Runs until Ctrl-C.",
        epilog="tokens file: one '<token-id> <token>' pair per line ('#' comments), tokens\n"
        "of 16 or more characters, mode 0600; the id is what the audit log records.\n"
        "For example:\n"
        "  token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\n"
        '  (umask 077; echo "alice $token" > tokens.txt; echo "$token" > alice.token)\n'
        "alice.token goes to the querier: fedai infer --token-file alice.token ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--model", required=True, metavar="DIR", help="model directory (or its model.pt)"
    )
    serve.add_argument(
        "--port",
        type=serve_port,
        required=True,
        help="TCP port, 1-65535 (0: the OS picks a free one and it is printed)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        help="tokens file: '<token-id> <token>' per line; must be mode 0600",
    )
    serve.add_argument(
        "--audit-log",
        metavar="FILE",
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
        epilog="input: one row per query and one column per input feature of the served\n"
        "model, in the order and scaling it was trained with; .csv: numbers only, an\n"
        "optional header row, no label column; .npz: an array 'x' (or the only array)\n"
        "of shape (rows, features).\n"
        "output: .csv with columns prediction, score_0, score_1, ...; .npz with the\n"
        "arrays 'scores' and 'predictions'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument(
        "--server",
        required=True,
        type=server_address,
        metavar="HOST:PORT",
        help="address of `fedai serve`, e.g. 127.0.0.1:50051",
    )
    infer.add_argument(
        "--input", required=True, metavar="FILE", help="features: .csv (numeric) or .npz"
    )
    infer.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output .csv or .npz (scores, predictions; mode 0600)",
    )
    infer.add_argument("--token", help=f"bearer token (prefer --token-file or ${TOKEN_ENV})")
    infer.add_argument(
        "--token-file", metavar="FILE", help="file whose first line is the bearer token"
    )
    infer.add_argument("--tls-ca", help="PEM CA certificate to verify a TLS server")
    infer.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    infer.set_defaults(func=run_infer)


def _readable(option: str, text: str | None) -> None:
    """Refuse a file option whose file cannot be read, naming the option and the path."""
    if text is None:
        return
    path = Path(text)
    if not path.is_file():
        got = "a directory" if path.is_dir() else "no such file"
        raise ConfigError(f"{option} {text!r} must be a readable file; got {got}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{option} {text!r} must be a readable file; got no read permission")


def model_path(text: str) -> Path:
    """Check ``--model`` locally: a directory with model.pt and model.json, or its model.pt.

    Raises:
        ModelError: nothing at ``text``, or a directory without both files; the message
            names the path as typed.
    """
    from fedai.models import MODEL_FILE, SPEC_FILE  # fedai.models imports torch

    path = Path(text)
    if not path.exists():
        raise ModelError(
            f"--model {text!r} must be a model directory ({MODEL_FILE} + {SPEC_FILE}, as "
            "fedai simulate writes) or its model.pt; got no such file or directory"
        )
    folder = path if path.is_dir() else path.parent
    missing = [name for name in (MODEL_FILE, SPEC_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"--model {text!r} must hold {MODEL_FILE} and {SPEC_FILE}; got no "
            + " and no ".join(missing)
        )
    return path


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together; got only one")
    for option, value in (
        ("--tokens", args.tokens),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    ):
        _readable(option, value)
    from fedai.inference.service import AuditLog, ServiceLimits, TlsFiles, TokenStore

    tls = TlsFiles(cert=Path(args.tls_cert), key=Path(args.tls_key)) if args.tls_cert else None
    limits = ServiceLimits(max_rows=args.max_rows, max_request_bytes=args.max_request_mib * 2**20)
    tokens = TokenStore.from_file(args.tokens) if args.tokens else None
    audit = AuditLog(args.audit_log)
    path = model_path(args.model)
    progress.report(f"loading the model from {args.model}")
    from fedai.inference.holder import ModelHolder
    from fedai.inference.service import create_server

    holder = ModelHolder.from_path(path)
    server, port = create_server(
        holder, host=args.host, port=args.port, tokens=tokens, audit=audit, limits=limits, tls=tls
    )
    print(f"fedai serve: listening on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=1.0)
    return EXIT_OK


def run_infer(args: argparse.Namespace) -> int:
    """Encrypt the input rows, query the server, write decrypted scores.

    Everything that can be checked here (token file, input file, output name, CA file)
    is checked before the server is contacted.
    """
    token = _token(args)
    out = Path(args.out)
    _check_out(out, args.out)
    _readable("--tls-ca", args.tls_ca)
    x = read_features(Path(args.input))
    from fedai.inference.client import InferenceClient, RemoteInferenceError

    progress.report(f"asking {args.server} for the model's shape")
    with InferenceClient(
        args.server, token=token, tls_ca=args.tls_ca, timeout=args.timeout
    ) as client:
        try:
            info = client.info()
            layers = info.layers
            if x.shape[1] != layers[0].in_features:
                raise DataError(
                    f"--input {args.input!r} must have {layers[0].in_features} features per "
                    f"row (the served model's inputs); got {x.shape[1]}"
                )
            progress.report(
                f"{x.shape[0]} rows, {len(layers)} layer(s): encrypting under a fresh CKKS key"
            )
            scores = client.predict(
                x,
                info=info,
                on_request=lambda done, total, what: progress.report(f"[{done}/{total}] {what}"),
            )
        except RemoteInferenceError as err:
            usage = _credential_error(err, args)
            if usage is None:
                raise
            raise usage from err
    write_scores(out, scores)
    print(f"fedai infer: {scores.shape[0]} rows -> {args.out}")
    return EXIT_OK


def _credential_error(err: Any, args: argparse.Namespace) -> ConfigError | None:
    """A token the server refused is the user's to fix (exit 2); None for anything else."""
    name = getattr(err.code, "name", "")
    if name == "UNAUTHENTICATED":
        return ConfigError(
            f"the server at {args.server} requires a bearer token; got none: pass "
            f"--token-file FILE (the token on its first line), --token or ${TOKEN_ENV}"
        )
    if name == "PERMISSION_DENIED":
        source = (
            f"--token-file {args.token_file!r}"
            if args.token_file
            else ("--token" if args.token else f"${TOKEN_ENV}")
        )
        return ConfigError(
            f"the token from {source} must be one the server at {args.server} knows; got "
            "one it refused (ask its operator for a token from its tokens file)"
        )
    return None


def _check_out(out: Path, text: str) -> None:
    if out.suffix not in SCORE_SUFFIXES:
        raise ConfigError(f"--out {text!r} must end in .csv or .npz; got {out.suffix!r}")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {text!r} must be in an existing directory; got no {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {text!r} must be in a writable directory; got {parent}")


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        _readable("--token-file", args.token_file)
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--token-file {args.token_file!r} must be readable: {err}") from err
        if not lines:
            raise ConfigError(f"--token-file {args.token_file!r} must hold a token; got nothing")
        return lines[0]
    token = args.token or os.environ.get(TOKEN_ENV)
    return token or None


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


__all__ = [
    "model_path",
    "predictions",
    "read_features",
    "register",
    "run_infer",
    "run_serve",
    "serve_port",
    "server_address",
    "write_scores",
]
