"""Querier side of encrypted inference: key generation, encryption of rows, decryption.

The querier owns the only CKKS secret key. It sends the holder a public context that
carries no keys at all (symmetric encryption, no rotations needed, so no Galois or relin
keys): 102 bytes at N=8192. See :mod:`fedai.inference.encoding` for the slot layouts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import tenseal as ts

from fedai.errors import CorruptPayloadError, InferenceError
from fedai.inference.encoding import (
    DEFAULT_PROFILE,
    Activation,
    CkksProfile,
    EncryptedBatch,
    EncryptedScores,
    LayerInfo,
    Layout,
    choose_layout,
    chunk_rows,
    rows_per_ciphertext,
)

logger = logging.getLogger(__name__)

# A layer evaluator: (layer index, public context bytes, encrypted batch) -> encrypted scores.
LayerEvaluator = Callable[[int, bytes, EncryptedBatch], EncryptedScores]
# Told before each request: (request number from 1, total requests, what it carries).
RequestCallback = Callable[[int, int, str], None]


class Querier:
    """Holds a CKKS secret key; encrypts feature rows and decrypts layer outputs.

    Args:
        profile: CKKS parameters; must match what the model holder accepts.
    """

    def __init__(self, *, profile: CkksProfile = DEFAULT_PROFILE) -> None:
        self.profile = profile
        self._context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            profile.poly_modulus_degree,
            coeff_mod_bit_sizes=list(profile.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
            n_threads=1,
        )
        self._context.global_scale = 2.0**profile.scale_bits
        self._public = self._context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def public_context(self) -> bytes:
        """Return the serialized context to send to the holder (no secret key, no keys)."""
        return bytes(self._public)

    def encrypt(self, rows: np.ndarray, *, layout: Layout) -> EncryptedBatch:
        """Encrypt a ``(n, d)`` float array of query rows in the given layout.

        Raises:
            InferenceError: if ``rows`` is not a finite, non-empty 2-D array.
        """
        x = _check_rows(rows)
        n, d = x.shape
        cts: list[bytes] = []
        start = 0
        for size in chunk_rows(layout, n, d, self.profile):
            block = x[start : start + size]
            start += size
            if layout is Layout.ROWS:
                cts.append(ts.ckks_vector(self._context, block.ravel().tolist()).serialize())
            else:
                cts.extend(
                    ts.ckks_vector(self._context, block[:, j].tolist()).serialize()
                    for j in range(d)
                )
                cts.append(ts.ckks_vector(self._context, [1.0] * size).serialize())
        return EncryptedBatch(layout=layout, rows=n, features=d, ciphertexts=tuple(cts))

    def decrypt(self, scores: EncryptedScores) -> np.ndarray:
        """Decrypt a holder reply into an ``(n, outputs)`` float64 array.

        Raises:
            CorruptPayloadError: if a ciphertext does not load or has the wrong size.
        """
        k = scores.outputs
        chunks = chunk_rows(scores.layout, scores.rows, scores.features, self.profile)
        if len(scores.ciphertexts) != len(chunks) * k:
            raise CorruptPayloadError(
                f"reply must hold {len(chunks) * k} ciphertexts ({len(chunks)} chunks x {k} "
                f"outputs); got {len(scores.ciphertexts)}"
            )
        out = np.empty((scores.rows, k), dtype=np.float64)
        start = 0
        for c, size in enumerate(chunks):
            for j in range(k):
                values = self._decrypt_one(scores.ciphertexts[c * k + j], c * k + j)
                if scores.layout is Layout.ROWS:
                    expected = size * scores.features
                    _check_size(values, expected, c * k + j)
                    out[start : start + size, j] = values.reshape(size, scores.features).sum(1)
                else:
                    _check_size(values, size, c * k + j)
                    out[start : start + size, j] = values
            start += size
        if not np.all(np.isfinite(out)):
            raise CorruptPayloadError("decrypted scores must be finite; got NaN or inf")
        return out

    def _decrypt_one(self, blob: bytes, index: int) -> np.ndarray:
        try:
            vec = ts.ckks_vector_from(self._context, blob)
            return np.asarray(vec.decrypt(), dtype=np.float64)
        except (ValueError, RuntimeError, TypeError) as err:
            raise CorruptPayloadError(
                f"reply ciphertext {index} must be a CKKS vector under this querier's key; "
                f"loading failed: {err}"
            ) from err


def _check_rows(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InferenceError(f"rows must be a non-empty 2-D array (n, d); got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InferenceError("rows must be finite; got NaN or inf")
    return x


def _check_size(values: np.ndarray, expected: int, index: int) -> None:
    if values.size != expected:
        raise CorruptPayloadError(
            f"reply ciphertext {index} must hold {expected} values; got {values.size}"
        )


def encrypted_predict(
    querier: Querier,
    evaluate: LayerEvaluator,
    layers: Sequence[LayerInfo],
    rows: np.ndarray,
    *,
    layout: Layout | None = None,
    max_rows: int | None = None,
    max_ciphertexts: int | None = None,
    on_request: RequestCallback | None = None,
) -> np.ndarray:
    """Run a served model on ``rows``: one round trip per linear layer (per request chunk).

    The querier encrypts, the holder evaluates the layer on ciphertexts, the querier
    decrypts and applies the layer's activation before encrypting again for the next layer.

    Args:
        querier: holds the secret key.
        evaluate: sends one layer request to the holder (in process or over gRPC).
        layers: the served layers' shapes, in order.
        rows: ``(n, d)`` feature rows.
        layout: force a layout; default picks per layer with :func:`choose_layout`.
        max_rows: most rows one request may carry (the server's limit); default no limit.
        max_ciphertexts: most ciphertexts one request may carry; default no limit.
        on_request: called before each request with its number (from 1), the total and a
            description such as ``"layer 1 of 3, rows 1-200 of 200"`` (progress only).

    Returns:
        The last layer's decrypted outputs, shape ``(n, out_features)``.

    Raises:
        InferenceError: if ``rows`` does not match the first layer, or a request cannot be
            made small enough for the limits.
    """
    x = _check_rows(rows)
    if not layers:
        raise InferenceError("layers must not be empty")
    if x.shape[1] != layers[0].in_features:
        raise InferenceError(f"rows must have {layers[0].in_features} features; got {x.shape[1]}")
    context = querier.public_context()
    n = x.shape[0]
    plans = [
        _plan(n, layer, querier.profile, layout, max_rows, max_ciphertexts) for layer in layers
    ]
    total = sum(-(-n // per_request) for _, per_request in plans)
    done = 0
    for index, (layer, (chosen, per_request)) in enumerate(zip(layers, plans, strict=True)):
        parts = []
        for start in range(0, n, per_request):
            if on_request is not None:
                done += 1
                stop = min(n, start + per_request)
                on_request(
                    done,
                    total,
                    f"layer {index + 1} of {len(layers)}, rows {start + 1}-{stop} of {n}",
                )
            batch = querier.encrypt(x[start : start + per_request], layout=chosen)
            parts.append(querier.decrypt(evaluate(index, context, batch)))
        x = np.concatenate(parts, axis=0)
        if layer.activation is Activation.RELU:
            x = np.maximum(x, 0.0)
    return x


def _plan(
    n: int,
    layer: LayerInfo,
    profile: CkksProfile,
    layout: Layout | None,
    max_rows: int | None,
    max_ciphertexts: int | None,
) -> tuple[Layout, int]:
    """Return the layout and the rows per request for one layer."""
    row_cap = min(n, max_rows) if max_rows is not None else n
    if row_cap < 1:
        raise InferenceError(f"max_rows must be >= 1; got {max_rows}")
    d = layer.in_features
    chosen = layout or choose_layout(row_cap, d, layer.out_features, profile)
    if max_ciphertexts is None:
        return chosen, row_cap
    if chosen is Layout.COLUMNS and d + 1 > max_ciphertexts and layout is None:
        chosen = Layout.ROWS
    if chosen is Layout.COLUMNS:
        if d + 1 > max_ciphertexts:
            raise InferenceError(
                f"layout columns needs {d + 1} ciphertexts per request; the limit is "
                f"{max_ciphertexts}"
            )
        per_ct = rows_per_ciphertext(chosen, d, profile)
        return chosen, min(row_cap, per_ct * (max_ciphertexts // (d + 1)))
    if max_ciphertexts < 1:
        raise InferenceError(f"max_ciphertexts must be >= 1; got {max_ciphertexts}")
    return chosen, min(row_cap, rows_per_ciphertext(chosen, d, profile) * max_ciphertexts)


__all__ = ["LayerEvaluator", "Querier", "RequestCallback", "encrypted_predict"]
