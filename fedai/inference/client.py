"""gRPC client for the encrypted inference service.

The client holds the querier (the secret key never leaves this process): it encrypts rows,
sends one Evaluate request per layer and chunk, decrypts, and applies activations.

A call the server fails raises :class:`RemoteInferenceError` with the gRPC status; a
server that cannot be reached at all (connection refused, unknown host) raises
:class:`ServerUnreachableError`, which names the address.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from fedai.errors import ConfigError, CorruptPayloadError, FedAIError
from fedai.inference.encoding import (
    CkksProfile,
    EncryptedBatch,
    EncryptedScores,
    LayerInfo,
    Layout,
)
from fedai.inference.querier import Querier, RequestCallback, encrypted_predict
from fedai.inference.service import LAYOUT_TO_PB, PB_TO_ACTIVATION, PB_TO_LAYOUT

logger = logging.getLogger(__name__)

# Generated stubs carry no type information; treat them as Any.
pb: Any = importlib.import_module("fedai.inference.proto.inference_pb2")
pb_grpc: Any = importlib.import_module("fedai.inference.proto.inference_pb2_grpc")

REQUEST_OVERHEAD_BYTES = 2**16
"""Room left in each request for the context and framing besides the ciphertexts."""


# Substrings of gRPC's UNAVAILABLE details that mean no connection was ever made.
_UNREACHABLE = ("Connection refused", "errors resolving", "DNS resolution failed")


class RemoteInferenceError(FedAIError):
    """The inference server refused or failed a call; ``code`` is the gRPC status.

    Not an :class:`~fedai.errors.InferenceError`: those are this side's bad input, while
    this is what the server (or the way to it) answered.
    """

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        *,
        target: str = "the server",
        message: str | None = None,
    ) -> None:
        super().__init__(message or f"{target} answered {method} with {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details
        self.target = target


class ServerUnreachableError(RemoteInferenceError):
    """Nothing answered at the target address (connection refused, unknown host)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str, *, target: str) -> None:
        if "Connection refused" in details:
            reason = "connection refused"
        elif "resolv" in details:
            reason = "the host name does not resolve"
        else:
            reason = details
        super().__init__(
            method,
            code,
            details,
            target=target,
            message=f"nothing listens at {target} ({reason}); start `fedai serve` there or "
            "correct the address",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    """What a server announces: layers, accepted CKKS parameters, limits."""

    layers: tuple[LayerInfo, ...]
    profile: CkksProfile
    max_rows: int
    max_request_bytes: int


class InferenceClient:
    """Talks to one inference server.

    Args:
        target: ``host:port``.
        token: bearer token, or None.
        tls_ca: PEM file of the CA that signed the server certificate; None = plaintext.
        timeout: seconds allowed per call.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        timeout: float = 120.0,
    ) -> None:
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if tls_ca is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            try:
                root = Path(tls_ca).read_bytes()
            except OSError as err:
                raise ConfigError(f"TLS CA file {str(tls_ca)!r} must be readable: {err}") from err
            creds = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.secure_channel(target, creds, options=options)
        self._stub = pb_grpc.EncryptedInferenceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.target = target

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and any(s in details for s in _UNREACHABLE):
                raise ServerUnreachableError(method, code, details, target=self.target) from err
            raise RemoteInferenceError(method, code, details, target=self.target) from err

    def health(self) -> str:
        """Return the server's health status (``"SERVING"``)."""
        return str(self._call("Health", pb.HealthRequest()).status)

    def info(self) -> ServerInfo:
        """Return the served layers, CKKS parameters and limits."""
        reply = self._call("ModelInfo", pb.ModelInfoRequest())
        return ServerInfo(
            layers=tuple(
                LayerInfo(
                    in_features=s.in_features,
                    out_features=s.out_features,
                    activation=PB_TO_ACTIVATION[s.activation],
                )
                for s in reply.layers
            ),
            profile=CkksProfile(
                poly_modulus_degree=reply.parameters.poly_modulus_degree,
                coeff_mod_bit_sizes=tuple(reply.parameters.coeff_mod_bit_sizes),
                scale_bits=reply.parameters.scale_bits,
            ),
            max_rows=reply.max_rows,
            max_request_bytes=reply.max_request_bytes,
        )

    def evaluate(self, layer: int, context: bytes, batch: EncryptedBatch) -> EncryptedScores:
        """Send one Evaluate request; the signature of a :data:`LayerEvaluator`."""
        request = pb.EvaluateRequest(
            layer=layer,
            context=context,
            layout=LAYOUT_TO_PB[batch.layout],
            rows=batch.rows,
            features=batch.features,
            ciphertexts=list(batch.ciphertexts),
        )
        reply = self._call("Evaluate", request)
        if reply.layout not in PB_TO_LAYOUT:
            raise CorruptPayloadError(f"reply layout must be rows or columns; got {reply.layout}")
        return EncryptedScores(
            layout=PB_TO_LAYOUT[reply.layout],
            rows=reply.rows,
            features=reply.features,
            outputs=reply.outputs,
            ciphertexts=tuple(reply.ciphertexts),
        )

    def predict(
        self,
        rows: np.ndarray,
        *,
        querier: Querier | None = None,
        info: ServerInfo | None = None,
        on_request: RequestCallback | None = None,
    ) -> np.ndarray:
        """Encrypted inference of the whole served model on ``rows``.

        Args:
            rows: ``(n, d)`` features.
            querier: key holder to use; default generates a fresh key for this call.
            info: the server's :meth:`info`, if already fetched.
            on_request: called before each Evaluate request (progress reporting).

        Returns:
            Decrypted outputs of the last layer, ``(n, out_features)``.
        """
        info = info or self.info()
        q = querier or Querier(profile=info.profile)
        ct_bytes = len(q.encrypt(np.zeros((1, 1)), layout=Layout.ROWS).ciphertexts[0])
        budget = info.max_request_bytes - REQUEST_OVERHEAD_BYTES - len(q.public_context())
        return encrypted_predict(
            q,
            self.evaluate,
            info.layers,
            rows,
            max_rows=info.max_rows,
            max_ciphertexts=max(1, budget // (ct_bytes + 16)),
            on_request=on_request,
        )


__all__ = ["InferenceClient", "RemoteInferenceError", "ServerInfo", "ServerUnreachableError"]
