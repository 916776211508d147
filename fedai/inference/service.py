"""gRPC service for encrypted inference: tokens, TLS, limits, audit log, health check.

Every Evaluate and ModelInfo call is authenticated with ``authorization: Bearer <token>``
metadata against a tokens file (one ``<token-id> <token>`` pair per line, ``#`` comments,
mode 0600), compared in constant time. Bad requests get a gRPC error status and the server
keeps serving.

Every call (Health, ModelInfo, Evaluate; unauthenticated, over-limit and failing ones too)
is written to the JSONL audit log twice, never with ciphertexts, contexts or tokens:

* ``event: "received"`` (request id, method, token id or ``-``, peer, and for Evaluate the
  layer, rows, features, ciphertext count and byte sizes), written before the model holder
  sees the request, so a request that kills the process is on record;
* ``event: "finished"``: the same fields plus outcome (``ok``, ``rejected``, ``dropped``,
  ``error``), gRPC status, reason and duration.

The handlers are registered as client-streaming on the server side (a unary call looks the
same on the wire), so a handler starts when the call arrives, before its message is read:
it authenticates first (no unauthenticated message is read) and it sees the calls whose
message gRPC drops for exceeding the transport limit (``max_request_bytes`` plus
:data:`TRANSPORT_MARGIN_BYTES`; those are audited as ``dropped`` and the client gets gRPC's
RESOURCE_EXHAUSTED). Requests between the two limits reach the service and are refused with
RESOURCE_EXHAUSTED and their size.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from fedai.errors import (
    ConfigError,
    CorruptPayloadError,
    FedAIError,
    InferenceError,
    KeyMismatchError,
)
from fedai.inference.audit import AuditLog
from fedai.inference.encoding import Activation, EncryptedBatch, Layout
from fedai.inference.holder import ModelHolder
from fedai.inference.tokens import TokenStore

# Generated messages carry no type information; treat them as Any.
pb: Any = importlib.import_module("fedai.inference.proto.inference_pb2")

logger = logging.getLogger(__name__)

ANONYMOUS = "-"
SERVICE_NAME = "fedai.inference.v1.EncryptedInference"

TRANSPORT_MARGIN_BYTES = 2**20
"""gRPC's receive limit is ``max_request_bytes`` plus this margin: requests up to it reach
the service and are refused with their size; larger ones are dropped by gRPC unread (so
memory stays bounded) and audited as ``dropped``."""

LAYOUT_TO_PB = {Layout.ROWS: pb.LAYOUT_ROWS, Layout.COLUMNS: pb.LAYOUT_COLUMNS}
PB_TO_LAYOUT = {v: k for k, v in LAYOUT_TO_PB.items()}
ACTIVATION_TO_PB = {Activation.NONE: pb.ACTIVATION_NONE, Activation.RELU: pb.ACTIVATION_RELU}
PB_TO_ACTIVATION = {v: k for k, v in ACTIVATION_TO_PB.items()}

_MESSAGES: dict[str, tuple[Any, Any]] = {
    "Health": (pb.HealthRequest, pb.HealthReply),
    "ModelInfo": (pb.ModelInfoRequest, pb.ModelInfoReply),
    "Evaluate": (pb.EvaluateRequest, pb.EvaluateReply),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLimits:
    """Per-request limits.

    Attributes:
        max_rows: most query rows in one Evaluate request.
        max_request_bytes: largest serialized request accepted. Larger requests are refused
            with RESOURCE_EXHAUSTED and audited; gRPC itself drops those more than
            :data:`TRANSPORT_MARGIN_BYTES` above this before they are read (audited as
            ``dropped``).
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

    @property
    def transport_bytes(self) -> int:
        """The receive limit given to gRPC: ``max_request_bytes + TRANSPORT_MARGIN_BYTES``."""
        return self.max_request_bytes + TRANSPORT_MARGIN_BYTES


class _RejectedError(Exception):
    """Internal: a request refused with a gRPC status (carried to the audit log)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, outcome: str = "rejected") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


_ERROR_CODES: tuple[tuple[type[FedAIError], grpc.StatusCode], ...] = (
    (KeyMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptPayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (InferenceError, grpc.StatusCode.INVALID_ARGUMENT),
)


class InferenceServicer:
    """Implements the EncryptedInference service on a :class:`ModelHolder`.

    Each method takes the iterator of raw request messages of a client-streaming handler
    (see :func:`method_handlers`) and reads exactly one message from it, after
    authenticating the call; the ``received`` audit entry is written before the model
    holder is called.

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

    def Health(  # noqa: N802
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Any:
        """Report SERVING (no token needed; a valid one is recorded)."""
        return self._handle(
            "Health", requests, context, lambda request: pb.HealthReply(status="SERVING")
        )

    def ModelInfo(  # noqa: N802
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Any:
        """Return layer shapes, accepted CKKS parameters and limits."""
        return self._handle("ModelInfo", requests, context, lambda request: self._info())

    def Evaluate(  # noqa: N802
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Any:
        """Evaluate one layer on encrypted rows."""
        return self._handle("Evaluate", requests, context, self._evaluate)

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

    def _evaluate(self, request: Any) -> Any:
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
        requests: Iterator[bytes],
        context: grpc.ServicerContext,
        work: Callable[[Any], Any],
    ) -> Any:
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "request_id": uuid.uuid4().hex,
            "method": method,
            "token_id": ANONYMOUS,
            "peer": context.peer(),
        }
        refusal: _RejectedError | None = None
        request: Any = None
        try:
            request = self._receive(method, requests, context, entry)
        except _RejectedError as err:
            refusal = err
        try:
            self.audit.record(event="received", **entry)
        except OSError:
            logger.exception("audit log unwritable: refusing %s %s", method, entry["request_id"])
            refusal = _RejectedError(
                grpc.StatusCode.UNAVAILABLE,
                "audit log must be writable to serve; see the server log",
            )
        if refusal is not None:
            self._finish(entry, start, refusal.code, refusal.message, outcome=refusal.outcome)
            _abort(context, refusal.code, refusal.message)
        try:
            reply = work(request)
        except _RejectedError as err:
            self._finish(entry, start, err.code, err.message, outcome=err.outcome)
            _abort(context, err.code, err.message)
        except FedAIError as err:
            code = next(
                (c for cls, c in _ERROR_CODES if isinstance(err, cls)),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            self._finish(entry, start, code, str(err))
            _abort(context, code, str(err))
        except Exception:
            logger.exception("%s %s failed unexpectedly", method, entry["request_id"])
            message = "internal error; see the server log"
            self._finish(entry, start, grpc.StatusCode.INTERNAL, message, outcome="error")
            _abort(context, grpc.StatusCode.INTERNAL, message)
        self._finish(entry, start, grpc.StatusCode.OK, None, outcome="ok")
        return reply

    def _receive(
        self,
        method: str,
        requests: Iterator[bytes],
        context: grpc.ServicerContext,
        entry: dict[str, Any],
    ) -> Any:
        """Authenticate, read and decode the one request message; fill the audit entry."""
        entry["token_id"] = self._authenticate(context, required=method != "Health")
        raw = self._read_message(requests, context)
        entry["bytes"] = len(raw)
        if len(raw) > self.limits.max_request_bytes:
            raise _RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request must be <= {self.limits.max_request_bytes} bytes; got {len(raw)}",
            )
        try:
            request = _MESSAGES[method][0].FromString(raw)
        except DecodeError as err:
            raise _RejectedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request must be a serialized {method}Request; got undecodable bytes",
            ) from err
        if method == "Evaluate":
            entry.update(
                layer=request.layer,
                rows=request.rows,
                features=request.features,
                ciphertexts=len(request.ciphertexts),
                context_bytes=len(request.context),
            )
        return request

    def _read_message(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        try:
            return next(requests)
        except (StopIteration, grpc.RpcError) as err:
            # gRPC dropped a message above its limit (the client got RESOURCE_EXHAUSTED), or
            # the client cancelled or ran out of time before its message arrived.
            if context.time_remaining() <= 0:
                raise _RejectedError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "request message must arrive before the deadline; got none",
                    outcome="dropped",
                ) from err
            raise _RejectedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message must be <= {self.limits.transport_bytes} bytes to reach the "
                "service; got none (larger, or the client cancelled)",
                outcome="dropped",
            ) from err

    def _authenticate(self, context: grpc.ServicerContext, *, required: bool) -> str:
        if self.tokens is None:
            return ANONYMOUS
        try:
            return self._identify(context)
        except _RejectedError:
            if required:
                raise
            return ANONYMOUS

    def _identify(self, context: grpc.ServicerContext) -> str:
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
        self,
        entry: dict[str, Any],
        start: float,
        code: grpc.StatusCode,
        reason: str | None,
        *,
        outcome: str = "rejected",
    ) -> None:
        finished = {
            **entry,
            "event": "finished",
            "outcome": outcome,
            "status": code.name,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
        }
        if reason is not None:
            finished["reason"] = reason
            logger.info(
                "%s %s from %s %s: %s",
                entry["method"],
                entry["request_id"],
                entry["token_id"],
                outcome,
                code.name,
            )
        try:
            self.audit.record(**finished)
        except OSError:
            logger.exception("audit log unwritable: %s %s not recorded", entry["method"], outcome)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers by method name, client-streaming on the server side.

    A unary call is one message then half-close on the wire, so the generated unary stubs
    call these handlers unchanged. The handler runs when the call arrives and reads the raw
    message itself (no deserializer): it can refuse before reading, and it learns when gRPC
    drops a message for exceeding ``grpc.max_receive_message_length`` (grpcio never calls a
    unary handler for such a call, so it could not be audited).

    Args:
        servicer: the servicer whose Health, ModelInfo and Evaluate methods serve the calls.

    Returns:
        Method name -> handler, for ``method_handlers_generic_handler`` and
        ``add_registered_method_handlers``.
    """
    return {
        name: grpc.stream_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=None,
            response_serializer=reply.SerializeToString,
        )
        for name, (_, reply) in _MESSAGES.items()
    }


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
        ("grpc.max_receive_message_length", lim.transport_bytes),
        ("grpc.max_send_message_length", -1),
        # gRPC sets SO_REUSEPORT by default: a second server on a busy port would start
        # and silently share the port's connections with the first.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    servicer = InferenceServicer(holder, tokens=tokens, audit=audit or AuditLog(None), limits=lim)
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
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
        raise ConfigError(
            f"address {address} must be free to listen on; got {_bind_problem(host, port)}"
        ) from err
    if bound == 0:
        raise ConfigError(
            f"address {address} must be free to listen on; got {_bind_problem(host, port)}"
        )
    if tokens is None:
        logger.warning("serving without access tokens: anyone who can connect may query")
    server.start()
    logger.info("encrypted inference serving %d layers on %s:%d", len(holder.layers), host, bound)
    return server, bound


def _bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, as the OS says it (gRPC's own error says little)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = found[0]
    except (socket.gaierror, UnicodeError) as err:
        return f"a host that does not resolve ({err})"
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(sockaddr)
    except OSError as err:
        return err.strerror or str(err)
    return "a bind failure inside gRPC (run with -v for gRPC's log)"


__all__ = [
    "TRANSPORT_MARGIN_BYTES",
    "AuditLog",
    "InferenceServicer",
    "ServiceLimits",
    "TlsFiles",
    "TokenStore",
    "create_server",
    "method_handlers",
]
