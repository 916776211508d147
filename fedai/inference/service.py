"""gRPC service for encrypted inference: tokens, TLS, limits, audit log, health check.

Every Evaluate and ModelInfo call is authenticated with ``authorization: Bearer <token>``
metadata against a tokens file (one ``<token-id> <token>`` pair per line, ``#`` comments),
compared in constant time. Every call is appended to a JSONL audit log: time, method, token
id, layer, rows, outcome, status and reason — never ciphertexts, contexts or tokens.
Bad requests get a gRPC error status and the server keeps serving.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from fedai.errors import (
    ConfigError,
    CorruptPayloadError,
    FedAIError,
    InferenceError,
    KeyMismatchError,
)
from fedai.inference.encoding import Activation, EncryptedBatch, Layout
from fedai.inference.holder import ModelHolder

# Generated stubs carry no type information; treat them as Any.
pb: Any = importlib.import_module("fedai.inference.proto.inference_pb2")
pb_grpc: Any = importlib.import_module("fedai.inference.proto.inference_pb2_grpc")

logger = logging.getLogger(__name__)

R = TypeVar("R")

MIN_TOKEN_LENGTH = 16
ANONYMOUS = "-"

LAYOUT_TO_PB = {Layout.ROWS: pb.LAYOUT_ROWS, Layout.COLUMNS: pb.LAYOUT_COLUMNS}
PB_TO_LAYOUT = {v: k for k, v in LAYOUT_TO_PB.items()}
ACTIVATION_TO_PB = {Activation.NONE: pb.ACTIVATION_NONE, Activation.RELU: pb.ACTIVATION_RELU}
PB_TO_ACTIVATION = {v: k for k, v in ACTIVATION_TO_PB.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLimits:
    """Per-request limits.

    Attributes:
        max_rows: most query rows in one Evaluate request.
        max_request_bytes: largest serialized Evaluate request accepted (and audited);
            gRPC itself drops messages more than 1 MiB above this, before any audit.
    """

    max_rows: int = 4096
    max_request_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        problems = []
        if self.max_rows < 1:
            problems.append(f"max_rows must be >= 1; got {self.max_rows}")
        if self.max_request_bytes < 2**20:
            problems.append(f"max_request_bytes must be >= 1 MiB; got {self.max_request_bytes}")
        if problems:
            raise ConfigError(problems)


class TokenStore:
    """Bearer tokens by id; lookup compares SHA-256 digests with :func:`hmac.compare_digest`.

    Args:
        tokens: mapping token id -> token.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        problems = [
            f"token {tid!r} must be >= {MIN_TOKEN_LENGTH} characters; got {len(tok)}"
            for tid, tok in tokens.items()
            if len(tok) < MIN_TOKEN_LENGTH
        ]
        if not tokens:
            problems.append("tokens file must define at least one token; got none")
        if problems:
            raise ConfigError(problems)
        self._digests = [(tid, _digest(tok)) for tid, tok in tokens.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> TokenStore:
        """Read ``<token-id> <token>`` lines.

        Raises:
            ConfigError: unreadable file, malformed line, duplicate id, short token.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"tokens file {str(p)!r} must be readable: {err}") from err
        tokens: dict[str, str] = {}
        problems = []
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.split()
            if len(fields) != 2:
                problems.append(
                    f"{p}:{number} must be '<token-id> <token>'; got {len(fields)} fields"
                )
            elif fields[0] in tokens:
                problems.append(f"{p}:{number} token id {fields[0]!r} must be unique")
            else:
                tokens[fields[0]] = fields[1]
        if problems:
            raise ConfigError(problems)
        return cls(tokens)

    def identify(self, token: str) -> str | None:
        """Return the id of ``token``, or None; every entry is compared (no early exit)."""
        digest = _digest(token)
        found = None
        for tid, ref in self._digests:
            if hmac.compare_digest(digest, ref):
                found = tid
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AuditLog:
    """Append-only JSONL log of requests (never their data). Thread-safe.

    Args:
        path: file to append to; None keeps no log.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, **entry: Any) -> None:
        """Append one entry with a UTC timestamp."""
        if self.path is None:
            return
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **entry}, sort_keys=True)
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


class _RejectedError(Exception):
    """Internal: a request refused with a gRPC status (carried to the audit log)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_ERROR_CODES: tuple[tuple[type[FedAIError], grpc.StatusCode], ...] = (
    (KeyMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptPayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceError, grpc.StatusCode.INVALID_ARGUMENT),
)


class InferenceServicer:
    """Implements the EncryptedInference service on a :class:`ModelHolder`.

    Args:
        holder: the model.
        tokens: accepted bearer tokens; None serves without authentication.
        audit: where to record requests.
        limits: per-request limits.
    """

    def __init__(
        self,
        holder: ModelHolder,
        *,
        tokens: TokenStore | None,
        audit: AuditLog,
        limits: ServiceLimits,
    ) -> None:
        self.holder = holder
        self.tokens = tokens
        self.audit = audit
        self.limits = limits

    def Health(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Report SERVING (no token needed)."""
        return pb.HealthReply(status="SERVING")

    def ModelInfo(  # noqa: N802
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        """Return layer shapes, accepted CKKS parameters and limits."""
        return self._handle("ModelInfo", context, lambda token_id, entry: self._info())

    def Evaluate(  # noqa: N802
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        """Evaluate one layer on encrypted rows."""
        return self._handle(
            "Evaluate", context, lambda token_id, entry: self._evaluate(request, entry)
        )

    def _info(self) -> Any:
        p = self.holder.profile
        return pb.ModelInfoReply(
            layers=[
                pb.LayerShape(
                    in_features=i.in_features,
                    out_features=i.out_features,
                    activation=ACTIVATION_TO_PB[i.activation],
                )
                for i in self.holder.infos
            ],
            parameters=pb.CkksParameters(
                poly_modulus_degree=p.poly_modulus_degree,
                coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
                scale_bits=p.scale_bits,
            ),
            max_rows=self.limits.max_rows,
            max_request_bytes=self.limits.max_request_bytes,
        )

    def _evaluate(self, request: Any, entry: dict[str, Any]) -> Any:
        entry.update(layer=request.layer, rows=request.rows, ciphertexts=len(request.ciphertexts))
        size = request.ByteSize()
        entry["bytes"] = size
        if size > self.limits.max_request_bytes:
            raise _RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request must be <= {self.limits.max_request_bytes} bytes; got {size}",
            )
        if request.rows > self.limits.max_rows:
            raise _RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rows must be <= {self.limits.max_rows} per request; got {request.rows}",
            )
        if request.layout not in PB_TO_LAYOUT:
            raise _RejectedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"layout must be LAYOUT_ROWS or LAYOUT_COLUMNS; got {request.layout}",
            )
        batch = EncryptedBatch(
            layout=PB_TO_LAYOUT[request.layout],
            rows=request.rows,
            features=request.features,
            ciphertexts=tuple(request.ciphertexts),
        )
        scores = self.holder.evaluate(request.layer, request.context, batch)
        return pb.EvaluateReply(
            layout=LAYOUT_TO_PB[scores.layout],
            rows=scores.rows,
            features=scores.features,
            outputs=scores.outputs,
            ciphertexts=list(scores.ciphertexts),
        )

    def _handle(
        self,
        method: str,
        context: grpc.ServicerContext,
        work: Callable[[str, dict[str, Any]], R],
    ) -> R:
        start = time.perf_counter()
        entry: dict[str, Any] = {"method": method, "token_id": ANONYMOUS}
        try:
            entry["token_id"] = self._authenticate(context)
            reply = work(entry["token_id"], entry)
        except _RejectedError as err:
            self._finish(entry, start, err.code, err.message)
            _abort(context, err.code, err.message)
        except FedAIError as err:
            code = next(
                (c for cls, c in _ERROR_CODES if isinstance(err, cls)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            self._finish(entry, start, code, str(err))
            _abort(context, code, str(err))
        except Exception:
            logger.exception("%s failed unexpectedly", method)
            message = "internal error; see the server log"
            self._finish(entry, start, grpc.StatusCode.INTERNAL, message)
            _abort(context, grpc.StatusCode.INTERNAL, message)
        self._finish(entry, start, grpc.StatusCode.OK, None)
        return reply

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        if self.tokens is None:
            return ANONYMOUS
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if not values:
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization metadata must be 'Bearer <token>'; got none",
            )
        value = values[0] if isinstance(values[0], str) else ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _RejectedError(
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization metadata must be 'Bearer <token>'; got another scheme",
            )
        token_id = self.tokens.identify(token.strip())
        if token_id is None:
            raise _RejectedError(
                grpc.StatusCode.PERMISSION_DENIED,
                "bearer token must be a known token; got an unknown one",
            )
        return token_id

    def _finish(
        self, entry: dict[str, Any], start: float, code: grpc.StatusCode, reason: str | None
    ) -> None:
        entry.update(
            outcome="ok" if code is grpc.StatusCode.OK else "rejected",
            status=code.name,
            duration_ms=round((time.perf_counter() - start) * 1000, 3),
        )
        if reason is not None:
            entry["reason"] = reason
            logger.info("%s from %s rejected: %s", entry["method"], entry["token_id"], code.name)
        self.audit.record(**entry)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files for the server's TLS identity."""

    cert: Path
    key: Path


def create_server(
    holder: ModelHolder,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: TokenStore | None = None,
    audit: AuditLog | None = None,
    limits: ServiceLimits | None = None,
    tls: TlsFiles | None = None,
    max_workers: int = 4,
) -> tuple[grpc.Server, int]:
    """Build and start an inference server.

    Args:
        holder: the model to serve.
        host: address to bind; 127.0.0.1 by default.
        port: TCP port; 0 lets the OS choose.
        tokens: accepted bearer tokens; None serves without authentication (logged).
        audit: audit log; default keeps none.
        limits: per-request limits.
        tls: certificate and key; None serves plaintext gRPC.
        max_workers: handler threads.

    Returns:
        The started server and the bound port.

    Raises:
        ConfigError: unreadable TLS files or a port that cannot be bound.
    """
    lim = limits or ServiceLimits()
    options = [
        ("grpc.max_receive_message_length", lim.max_request_bytes + 2**20),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    servicer = InferenceServicer(holder, tokens=tokens, audit=audit or AuditLog(None), limits=lim)
    pb_grpc.add_EncryptedInferenceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
            bound = server.add_secure_port(address, creds)
    except OSError as err:
        raise ConfigError(f"TLS files must be readable: {err}") from err
    except RuntimeError as err:
        raise ConfigError(f"address {address} must be bindable: {err}") from err
    if bound == 0:
        raise ConfigError(f"address {address} must be bindable; binding failed")
    if tokens is None:
        logger.warning("serving without access tokens: anyone who can connect may query")
    server.start()
    logger.info("encrypted inference serving %d layers on %s:%d", len(holder.layers), host, bound)
    return server, bound


__all__ = [
    "AuditLog",
    "InferenceServicer",
    "ServiceLimits",
    "TlsFiles",
    "TokenStore",
    "create_server",
]
