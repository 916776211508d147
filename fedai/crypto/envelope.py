"""The authenticated envelope every encrypted payload travels in.

A payload is a list of ``uint8`` arrays (so it fits a Flower ``ArrayRecord``):
``payload[0]`` is a header, ``payload[1:]`` are the serialized ciphertexts, one per chunk.
The header names the scheme and payload kind, carries the key-set fingerprint, the number
of values, the slot count, the number of summed contributions and each array's shape and
dtype, and ends with an HMAC-SHA256 tag (RFC 2104) over the header and every ciphertext.

Why a tag: CKKS ciphertexts carry no integrity protection. One flipped bit in a serialized
TenSEAL ciphertext was accepted 16 times out of 20 and decrypted silently to values near
1e31 (measured with TenSEAL 0.3.18). The tag key is shared by the key set's clients and coordinator
(never by outsiders), so the coordinator rejects corrupted, truncated, spliced or injected
payloads *before* adding them. It does not protect against a key holder that lies; the
client-side bounds check in :mod:`fedai.crypto.ckks` is the second line of defence. A key
holder can also record any shapes and item sizes, so receivers compare them with the
layout they declare (:func:`reference_layout`, :func:`fedai.aggregation.layout_mismatch`),
never with a layout the contributions vote for.

Layout (big-endian)::

    magic 8s | version H | scheme B | kind B | fingerprint 32s | n_values Q | slots I
    | n_blobs I | n_summands I | n_arrays I | n_arrays x (itemsize B, ndim B, ndim x Q)
    | tag 32s
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from fedai.aggregation import agreed_layout
from fedai.crypto.packing import FLOAT_DTYPES, ArraySpec
from fedai.errors import CorruptPayloadError, KeyMismatchError

if TYPE_CHECKING:
    from fedai.aggregation import Shapes

MAGIC = b"FEDAIENC"
VERSION = 1
TAG_BYTES = 32
MAX_ARRAYS = 65_536
MAX_SUMMANDS = 2**31 - 1
MAX_NDIM = 8
MAX_VALUES = 2**34
MAX_BLOB_BYTES = 256 * 2**20

_FIXED = struct.Struct(">8sHBB32sQIIII")
_ARRAY = struct.Struct(">BB")
_DIM = struct.Struct(">Q")
_LEN = struct.Struct(">Q")
_MAC_DOMAIN = b"fedai/payload-mac/v1\x00"


class Scheme(IntEnum):
    """Encryption scheme codes of the built-in schemes, recorded in the header.

    The registry (:mod:`fedai.schemes`) owns the codes: each ``SchemeSpec.wire_code`` is
    unique, and the envelope accepts any code in 1..255, so a new scheme picks a free one
    in its own module and needs no member here.
    """

    CKKS = 1
    PAILLIER = 2


class PayloadKind(IntEnum):
    """What a payload holds: one client's contribution or the coordinator's sum."""

    CONTRIBUTION = 1
    AGGREGATE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """Parsed header of an encrypted payload.

    Attributes:
        scheme: Encryption scheme of the ciphertexts.
        kind: Contribution (client -> coordinator) or aggregate (coordinator -> clients).
        fingerprint: 32-byte key-set fingerprint the ciphertexts were made under.
        n_values: Number of model values packed.
        slots: Values per ciphertext.
        n_summands: Number of contributions summed into this payload (1 for a contribution).
        specs: Shape and dtype of each model array, in order.
    """

    scheme: int
    kind: PayloadKind
    fingerprint: bytes
    n_values: int
    slots: int
    n_summands: int
    specs: tuple[ArraySpec, ...]

    @property
    def n_blobs(self) -> int:
        """Number of ciphertexts: ``ceil(n_values / slots)``."""
        return -(-self.n_values // self.slots)

    def _header(self) -> bytes:
        parts = [
            _FIXED.pack(
                MAGIC,
                VERSION,
                int(self.scheme),
                int(self.kind),
                self.fingerprint,
                self.n_values,
                self.slots,
                self.n_blobs,
                self.n_summands,
                len(self.specs),
            )
        ]
        for spec in self.specs:
            parts.append(_ARRAY.pack(spec.itemsize, len(spec.shape)))
            parts.extend(_DIM.pack(d) for d in spec.shape)
        return b"".join(parts)

    def to_payload(self, blobs: Sequence[bytes], *, mac_key: bytes) -> list[np.ndarray]:
        """Return ``[header, *blobs]`` as uint8 arrays, the header ending in the tag.

        Args:
            blobs: Serialized ciphertexts, ``n_blobs`` of them.
            mac_key: The key set's payload-authentication key.

        Returns:
            The payload. Blob arrays are read-only views of ``blobs`` (no copy).
        """
        if len(blobs) != self.n_blobs:
            raise ValueError(f"envelope needs {self.n_blobs} ciphertexts; got {len(blobs)}")
        body = [np.frombuffer(b, dtype=np.uint8) for b in blobs]
        header = self._header()
        tag = _tag(mac_key, header, body)
        return [np.frombuffer(header + tag, dtype=np.uint8), *body]

    @classmethod
    def from_payload(
        cls,
        payload: Sequence[np.ndarray],
        *,
        scheme: int,
        fingerprint: bytes,
        mac_key: bytes,
        slots: int,
    ) -> tuple[Envelope, list[np.ndarray]]:
        """Parse and authenticate a payload.

        Checks, in order: structure and magic, version, scheme, fingerprint, the range of
        every fixed field and the sizes they imply (header length, ciphertext count and
        sizes), then the tag, and only then parses the array shapes (so an outsider's
        bytes cost at most one bounded MAC computation, and nothing large is parsed
        before it).

        Args:
            payload: The received arrays.
            scheme: The scheme the receiver expects.
            fingerprint: The receiver's key-set fingerprint.
            mac_key: The receiver's payload-authentication key.
            slots: The receiver's values per ciphertext.

        Returns:
            The envelope and the ciphertext arrays (``payload[1:]``).

        Raises:
            KeyMismatchError: The payload was made under another key set.
            CorruptPayloadError: Anything else is wrong (empty, truncated, random bytes,
                wrong counts or shapes, bad tag).
        """
        if not isinstance(payload, Sequence) or len(payload) == 0:
            raise CorruptPayloadError("encrypted payload must hold a header array; got none")
        head = _as_bytes_array(payload[0], "payload header")
        raw = head.tobytes()
        if len(raw) < _FIXED.size + TAG_BYTES:
            raise CorruptPayloadError(
                f"payload header must be >= {_FIXED.size + TAG_BYTES} bytes; got {len(raw)}"
            )
        (
            magic,
            version,
            scheme_code,
            kind_code,
            fp,
            n_values,
            n_slots,
            n_blobs,
            n_summands,
            n_arrays,
        ) = _FIXED.unpack_from(raw)
        if magic != MAGIC:
            raise CorruptPayloadError(f"payload magic must be {MAGIC!r}; got {magic!r}")
        if version != VERSION:
            raise CorruptPayloadError(f"payload version must be {VERSION}; got {version}")
        if scheme_code != int(scheme):
            raise KeyMismatchError(
                f"payload scheme must be {_scheme_name(scheme)}; got code {scheme_code}"
            )
        if not hmac.compare_digest(fp, fingerprint):
            raise KeyMismatchError(
                f"payload key fingerprint must be {fingerprint.hex()[:16]}; "
                f"got {fp.hex()[:16]} (encrypted under another key set)"
            )
        problems: list[str] = []
        if kind_code not in {k.value for k in PayloadKind}:
            problems.append(f"payload kind must be 1 or 2; got {kind_code}")
        if n_slots != slots:
            problems.append(f"payload slots must be {slots}; got {n_slots}")
        if not 0 < n_values <= MAX_VALUES:
            problems.append(f"payload value count must be in [1, {MAX_VALUES}]; got {n_values}")
        if not 1 <= n_summands <= MAX_SUMMANDS:
            problems.append(
                f"payload summand count must be in [1, {MAX_SUMMANDS}]; got {n_summands}"
            )
        if not 1 <= n_arrays <= min(MAX_ARRAYS, max(n_values, 1)):
            problems.append(
                f"payload array count must be in [1, min({MAX_ARRAYS}, value count)]; "
                f"got {n_arrays}"
            )
        if problems:
            raise CorruptPayloadError("; ".join(problems))
        # Bound everything before the tag is checked: the header's size follows from the
        # array count, the ciphertext count from the value count; nothing is parsed yet.
        longest = _FIXED.size + n_arrays * (_ARRAY.size + MAX_NDIM * _DIM.size) + TAG_BYTES
        if len(raw) > longest:
            raise CorruptPayloadError(
                f"payload header must be <= {longest} bytes for {n_arrays} arrays; got {len(raw)}"
            )
        want_blobs = -(-n_values // n_slots)
        if n_blobs != want_blobs or len(payload) != 1 + want_blobs:
            raise CorruptPayloadError(
                f"payload must hold {want_blobs} ciphertexts for "
                f"{n_values} values; header says {n_blobs}, got "
                f"{len(payload) - 1}"
            )
        body = [_as_bytes_array(a, f"ciphertext {i}") for i, a in enumerate(payload[1:])]
        for i, b in enumerate(body):
            if not 0 < b.size <= MAX_BLOB_BYTES:
                raise CorruptPayloadError(
                    f"ciphertext {i} must be 1..{MAX_BLOB_BYTES} bytes; got {b.size}"
                )
        end = len(raw) - TAG_BYTES
        if not hmac.compare_digest(raw[end:], _tag(mac_key, raw[:end], body)):
            raise CorruptPayloadError(
                "payload authentication tag must match its contents; it "
                "does not (corrupted in transit, or not made by a "
                "holder of this key set)"
            )
        # Authenticated from here on: a key holder may still lie, so keep checking.
        specs, parsed = _parse_specs(raw, _FIXED.size, n_arrays)
        if parsed != end:
            raise CorruptPayloadError(
                f"payload header must be {parsed + TAG_BYTES} bytes; got {len(raw)}"
            )
        total = sum(s.size for s in specs)
        if total != n_values:
            raise CorruptPayloadError(f"payload shapes must hold {n_values} values; got {total}")
        env = cls(
            scheme=scheme,
            kind=PayloadKind(kind_code),
            fingerprint=fp,
            n_values=n_values,
            slots=n_slots,
            n_summands=n_summands,
            specs=specs,
        )
        return env, body


def reference_layout(envelopes: Sequence[Envelope], shapes: Shapes | None = None) -> Envelope:
    """The envelope whose layout every contribution of a sum must carry.

    The reference is the declared layout ``shapes`` (the model's shapes and dtypes, as the
    coordinator passes them), never one the contributions vote for: a key holder can tag
    its payload with any item sizes, and with one honest contribution a tie-break toward
    either dtype would let it get the honest one dropped and become the aggregate. Where
    ``shapes`` declares no dtype, the contributions must agree; a strict majority blames
    the odd ones out, a tie blames nobody (:func:`~fedai.aggregation.agreed_layout`).

    Args:
        envelopes: The contributions' envelopes, in order.
        shapes: The declared layout, or None.

    Returns:
        The first envelope (all carry its layout).

    Raises:
        ValueError: No envelopes.
        ContributionError: Envelope ``index`` differs from the declared layout (or from the
            majority where no dtype is declared).
        CorruptPayloadError: No dtype declared and no majority layout.
    """
    if not envelopes:
        raise ValueError("reference_layout needs at least one envelope; got none")
    agreed_layout([env.specs for env in envelopes], shapes)
    return envelopes[0]


def _scheme_name(code: int) -> str:
    try:
        return Scheme(code).name.lower()
    except ValueError:
        return f"code {int(code)}"


def _as_bytes_array(a: object, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 1:
        got = f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
        raise CorruptPayloadError(f"{what} must be a 1-D uint8 array; got {got}")
    return np.ascontiguousarray(a)


def _parse_specs(raw: bytes, offset: int, n_arrays: int) -> tuple[tuple[ArraySpec, ...], int]:
    specs: list[ArraySpec] = []
    limit = len(raw) - TAG_BYTES
    try:
        for i in range(n_arrays):
            if offset + _ARRAY.size > limit:
                raise CorruptPayloadError(f"payload header truncated in array {i} of {n_arrays}")
            itemsize, ndim = _ARRAY.unpack_from(raw, offset)
            offset += _ARRAY.size
            if itemsize not in FLOAT_DTYPES or ndim > MAX_NDIM:
                raise CorruptPayloadError(
                    f"payload array {i} must be float16/32/64 with <= "
                    f"{MAX_NDIM} dims; got itemsize {itemsize}, "
                    f"ndim {ndim}"
                )
            if offset + ndim * _DIM.size > limit:
                raise CorruptPayloadError(f"payload header truncated in array {i} of {n_arrays}")
            shape = tuple(_DIM.unpack_from(raw, offset + k * _DIM.size)[0] for k in range(ndim))
            if any(d > MAX_VALUES for d in shape):
                raise CorruptPayloadError(
                    f"payload array {i} dims must be <= {MAX_VALUES}; got {shape}"
                )
            offset += ndim * _DIM.size
            specs.append(ArraySpec(shape, itemsize))
    except struct.error as err:  # pragma: no cover - guarded by the bounds checks above
        raise CorruptPayloadError(f"payload header is malformed: {err}") from err
    return tuple(specs), offset


def _tag(mac_key: bytes, header: bytes, body: Sequence[np.ndarray]) -> bytes:
    mac = hmac.new(mac_key, _MAC_DOMAIN, hashlib.sha256)
    mac.update(header)
    for b in body:
        mac.update(_LEN.pack(b.size))
        mac.update(b.data)
    return mac.digest()


__all__ = [
    "MAGIC",
    "MAX_SUMMANDS",
    "VERSION",
    "Envelope",
    "PayloadKind",
    "Scheme",
    "reference_layout",
]
