"""The aggregation seam: what clients encode, what the coordinator sums, what clients decode.

fedai aggregates *weighted contributions*, the same way in every scheme:

1. each sampled client ``i`` trains from the current global model to local weights
   ``w_i`` and encodes ``n_i * w_i`` (``n_i`` its aggregation weight, e.g. example count)
   with :meth:`ClientCodec.encode`;
2. the coordinator only **adds** payloads (:meth:`SecureSum.sum`) and keeps the sum and
   the total weight ``N = sum(n_i)``; it never multiplies or divides;
3. clients receive ``(sum, N)`` and :meth:`ClientCodec.decode` it to ``sum / N``, the
   FedAvg model, checking bounds before they use it.

In the clear (:class:`PlainSum` / :class:`PlainCodec`) this is plain FedAvg. Secure schemes
(CKKS, Paillier, in :mod:`fedai.crypto`) implement the same two protocols on ciphertext
bytes carried as ``uint8`` arrays, so the coordinator holds no plaintext update or model.
The round-1 model is never sent: every party builds it from the experiment seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from fedai.errors import ContributionError, CorruptPayloadError, KeyMismatchError

Payload = list[np.ndarray]
Shapes = Sequence[tuple[int, ...]]

#: What to try when model values pass ``secure_aggregation.update_bound`` (appended to the
#: bounds-check messages; it quotes no value).
BOUND_HINT = (
    "the model diverged or its inputs are unscaled: standardise the features "
    '(data.standardize = "zscore"), lower train.lr, or raise secure_aggregation.update_bound'
)


class SecureSum(Protocol):
    """Coordinator side: validates and adds payloads. Holds no secret key."""

    name: str

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Raise a typed error if ``payload`` cannot be summed (wrong key, corrupt, ...).

        ``shapes``, when given, is the model's layout the payload must carry.
        """

    def sum(self, payloads: Sequence[Payload]) -> Payload:
        """Return the homomorphic (or plain) sum of already-checked payloads.

        Raises :class:`~fedai.errors.ContributionError` naming the first payload that
        cannot be added, so that the caller can leave it out and sum the rest.
        """


class ClientCodec(Protocol):
    """Client side: encodes weighted weights and decodes the aggregate."""

    name: str

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Return the payload for ``weight * weights``."""

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Return ``payload / total_weight`` as arrays of ``shapes``; bounds-checked."""


@contextlib.contextmanager
def blame(index: int, *, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn payload ``index``'s typed failure into :class:`ContributionError` naming it.

    ``also`` adds exception types a scheme's native library raises on bad input (TenSEAL's
    ``ValueError``/``RuntimeError``), so they blame the payload too.
    """
    caught: tuple[type[Exception], ...] = (CorruptPayloadError, KeyMismatchError, *also)
    try:
        yield
    except ContributionError:
        raise
    except caught as err:
        raise ContributionError(f"{type(err).__name__}: {err}", index=index) from err


def quantize(values: np.ndarray, decimals: int | None) -> np.ndarray:
    """Snap ``values`` to the grid ``10**-decimals`` (float64); ``None`` leaves them as is.

    Clients quantize their weights before encoding, so that with integer aggregation
    weights the aggregate ``sum(n_i * w_i)`` lies exactly on the grid.
    """
    v = np.asarray(values, dtype=np.float64)
    if decimals is None:
        return v
    step = 10.0**-decimals
    return np.rint(v / step) * step


def exact_average(total: np.ndarray, total_weight: float, decimals: int | None) -> np.ndarray:
    """Return ``total / total_weight`` after snapping ``total`` back onto the grid.

    The sum of grid values with integer weights is itself a grid value, so rounding the
    (decrypted) sum to the grid removes any decryption error smaller than half a grid step
    *exactly*: a CKKS run then yields bit for bit the model a plaintext run yields, and the
    released value no longer carries the CKKS error that key-recovery attacks on shared
    decryptions exploit (Li & Micciancio, EUROCRYPT 2021). ``None`` skips the snap.
    """
    t = np.asarray(total, dtype=np.float64)
    if decimals is None:
        return t / total_weight
    step = 10.0**-decimals
    return (np.rint(t / step) * step) / total_weight


def _check_arrays(payload: Payload, what: str) -> None:
    if not payload:
        raise CorruptPayloadError(f"{what} must hold at least one array; got none")
    for i, a in enumerate(payload):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise CorruptPayloadError(
                f"{what} array {i} must be a float array; got {getattr(a, 'dtype', type(a))}"
            )
        if not np.all(np.isfinite(a)):
            raise CorruptPayloadError(f"{what} array {i} must be finite; got NaN or inf")


def _check_shapes(payload: Payload, shapes: Shapes, what: str) -> None:
    if [tuple(a.shape) for a in payload] != [tuple(s) for s in shapes]:
        raise CorruptPayloadError(
            f"{what} shapes must be {list(shapes)}; got {[a.shape for a in payload]}"
        )


class PlainSum:
    """Sums float payloads in the clear (float64). The coordinator sees the model."""

    name = "none"

    def __init__(self) -> None:
        self._shapes: list[tuple[int, ...]] | None = None

    def check(self, payload: Payload, shapes: Shapes | None = None) -> None:
        """Raise :class:`CorruptPayloadError` on non-float, non-finite or mismatched arrays."""
        _check_arrays(payload, "plain payload")
        if shapes is not None:
            _check_shapes(payload, shapes, "plain payload")

    def sum(self, payloads: Sequence[Payload]) -> Payload:
        """Return the element-wise float64 sum; shapes must agree."""
        if not payloads:
            raise CorruptPayloadError("sum needs at least one payload; got none")
        shapes = [a.shape for a in payloads[0]]
        out = [np.zeros(s, dtype=np.float64) for s in shapes]
        for i, p in enumerate(payloads):
            if [a.shape for a in p] != shapes:
                raise ContributionError(
                    f"payload {i} shapes must be {shapes}; got {[a.shape for a in p]}", index=i
                )
            for acc, a in zip(out, p, strict=True):
                acc += a
        return out


class PlainCodec:
    """Client codec for the clear: ``encode = n * w`` (float64), ``decode = sum / N``.

    Decoding applies the same bounds check and rounding step as the secure codecs
    (``round_decimals``), so a plaintext run and an encrypted run of the same config
    follow the same trajectory and can be compared parameter by parameter.
    """

    name = "none"

    def __init__(
        self, *, bound: float = 1e6, round_decimals: int | None = None, float64: bool = False
    ) -> None:
        self.bound = bound
        self.round_decimals = round_decimals
        self.float64 = float64  # decode to float64 (feature statistics), not float32

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Return ``weight * quantize(w)`` for each array, in float64."""
        return [quantize(w, self.round_decimals) * float(weight) for w in weights]

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Return ``payload / total_weight`` as float32 arrays, checking shapes and bounds."""
        if not total_weight > 0:
            raise CorruptPayloadError(f"total weight must be > 0; got {total_weight!r}")
        _check_arrays(payload, "aggregate")
        _check_shapes(payload, shapes, "aggregate")
        avg = [exact_average(a, total_weight, self.round_decimals) for a in payload]
        worst = max(float(np.max(np.abs(a))) if a.size else 0.0 for a in avg)
        if worst > self.bound:
            raise CorruptPayloadError(
                f"secure_aggregation.update_bound: aggregate values must be within "
                f"+-{self.bound:g}; got {worst:g}; {BOUND_HINT}"
            )
        return [a if self.float64 else a.astype(np.float32) for a in avg]


__all__ = [
    "BOUND_HINT",
    "ClientCodec",
    "Payload",
    "PlainCodec",
    "PlainSum",
    "SecureSum",
    "Shapes",
    "blame",
    "exact_average",
    "quantize",
]
