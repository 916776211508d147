"""Load untrusted CKKS ciphertexts safely: check the bytes, then SEAL's own validity check.

TenSEAL 0.3.18 deserialises structurally malformed ciphertexts and then crashes in native
arithmetic: a ``CKKSVector`` whose ciphertext field was renamed by one flipped bit (the
protobuf tag ``0x12`` of field 2 turned into field 3, 6 or 10) loads as a vector with
*no* ciphertext, and the first ``add_`` or ``*`` dereferences it (a segfault).
A ciphertext at another scale loads too and then fails in the middle of a sum. Every
ciphertext that crossed a trust boundary therefore goes through :func:`load_ckks_vector`,
which checks, before any native call:

1. the serialised form (TenSEAL's ``CKKSVector`` protobuf): exactly the fields TenSEAL
   writes, in its order -- field 1 the packed size (one varint, equal to the expected
   slot count), field 2 exactly one SEAL ciphertext, field 3 the scale (a double equal to
   the context's scale) -- and nothing else; the SEAL blob's own header (magic ``0xA15E``,
   header size 16, SEAL 4.x, a known compression mode, declared size equal to the bytes);

and after TenSEAL has loaded it (SEAL's ``Ciphertext::load`` parses the compressed body):

2. exactly one ciphertext; SEAL's ``is_valid_for`` (metadata, buffer size *and* every
   coefficient below its modulus -- the check SEAL runs before it trusts a ciphertext);
   two polynomials; the context's first data level (what every fresh ciphertext and every
   sum of them is at); NTT form; the context's scale.

Measured on the 26k-parameter MLP (``experiments/bench/ckks.py``), the checks cost a few
percent of the coordinator's sum; the fuzz suite (``tests/fuzz``) drives bit flips,
truncations and field overflows, authenticated and not, through every decoder that uses it.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from fedai.errors import CorruptPayloadError

if TYPE_CHECKING:
    import tenseal as ts

SEAL_MAGIC = 0xA15E
SEAL_HEADER_SIZE = 16
SEAL_MAJOR_VERSION = 4
SEAL_COMPRESSION_MODES = frozenset({0, 1, 2})  # none, zlib, zstd
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_DOUBLE = struct.Struct("<d")
# protobuf keys: (field << 3) | wire type
_KEY_SIZE = (1 << 3) | 2  # packed repeated uint32
_KEY_CIPHERTEXT = (2 << 3) | 2  # bytes
_KEY_SCALE = (3 << 3) | 1  # double


def _varint(raw: bytes, i: int, where: str) -> tuple[int, int]:
    """Read a protobuf varint at ``raw[i]``; return (value, next index)."""
    value = 0
    for shift in range(0, 64, 7):
        if i >= len(raw):
            raise CorruptPayloadError(f"{where} must be a CKKS vector; got truncated bytes")
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
    raise CorruptPayloadError(f"{where} must be a CKKS vector; got an overlong varint")


def check_ckks_bytes(raw: bytes, *, size: int, scale: float, where: str) -> None:
    """Check the structure of a serialised TenSEAL ``CKKSVector`` without native code.

    Args:
        raw: The serialised vector.
        size: The number of values it must hold.
        scale: The scale it must carry (the context's ``global_scale``).
        where: What the bytes are, for error messages (e.g. ``"payload 2 ciphertext 0"``).

    Raises:
        CorruptPayloadError: The bytes are not exactly a one-ciphertext CKKS vector of
            ``size`` values at ``scale``.
    """
    i = 0
    key, i = _varint(raw, i, where)
    if key != _KEY_SIZE:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector starting with its size (protobuf key {_KEY_SIZE}); "
            f"got key {key}"
        )
    n, i = _varint(raw, i, where)
    end = i + n
    start = i
    got_size, i = _varint(raw, i, where)
    if i != end:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector whose size field is one varint; got a "
            f"{n}-byte field holding a {i - start}-byte varint"
        )
    if got_size != size:
        raise CorruptPayloadError(f"{where} must hold {size} values; got {got_size}")
    key, i = _varint(raw, i, where)
    if key != _KEY_CIPHERTEXT:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector holding one ciphertext (protobuf key "
            f"{_KEY_CIPHERTEXT}); got key {key}"
        )
    n, i = _varint(raw, i, where)
    body, i = i, i + n
    if i + 1 + _DOUBLE.size != len(raw):
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector of one ciphertext and a scale; got "
            f"{len(raw) - body - n} bytes after a {n}-byte ciphertext"
        )
    _check_seal_header(raw, body, n, where)
    if raw[i] != _KEY_SCALE:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector ending with its scale (protobuf key {_KEY_SCALE}); "
            f"got key {raw[i]}"
        )
    (got_scale,) = _DOUBLE.unpack_from(raw, i + 1)
    if not got_scale == scale:  # also False for NaN
        raise CorruptPayloadError(f"{where} scale must be {_pow2(scale)}; got {_pow2(got_scale)}")


def _check_seal_header(raw: bytes, start: int, n: int, where: str) -> None:
    if n < _SEAL_HEADER.size:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector holding a SEAL ciphertext; got {n} bytes"
        )
    magic, header_size, major, _minor, mode, _reserved, declared = _SEAL_HEADER.unpack_from(
        raw, start
    )
    problems = []
    if magic != SEAL_MAGIC:
        problems.append(f"magic must be {SEAL_MAGIC:#x}; got {magic:#x}")
    if header_size != SEAL_HEADER_SIZE:
        problems.append(f"header size must be {SEAL_HEADER_SIZE}; got {header_size}")
    if major != SEAL_MAJOR_VERSION:
        problems.append(f"SEAL version must be {SEAL_MAJOR_VERSION}.x; got {major}")
    if mode not in SEAL_COMPRESSION_MODES:
        problems.append(f"compression mode must be 0, 1 or 2; got {mode}")
    if declared != n:
        problems.append(f"declared size must be the {n} bytes present; got {declared}")
    if problems:
        raise CorruptPayloadError(
            f"{where} must be a CKKS vector with a valid SEAL header: " + "; ".join(problems)
        )


def _pow2(scale: float) -> str:
    if math.isfinite(scale) and scale > 0:
        return f"2^{math.log2(scale):g}"
    return repr(scale)


def load_ckks_vector(context: ts.Context, raw: bytes, *, size: int, where: str) -> ts.CKKSVector:
    """Load an untrusted CKKS vector, checked before and after deserialisation.

    Args:
        context: The receiver's TenSEAL context (keyless, public or private).
        raw: The serialised vector.
        size: The number of values it must hold.
        where: What the bytes are, for error messages.

    Returns:
        A vector that is safe to add to, multiply by plaintexts and decrypt.

    Raises:
        CorruptPayloadError: Any check fails (see the module docstring).
    """
    import tenseal as ts
    import tenseal.sealapi as sealapi

    scale = float(context.global_scale)
    check_ckks_bytes(raw, size=size, scale=scale, where=where)
    try:
        vec = ts.ckks_vector_from(context, raw)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CorruptPayloadError(
            f"{where} must be a CKKS ciphertext under this key set; got {type(err).__name__}: {err}"
        ) from err
    seal = context.seal_context().data
    cts = vec.ciphertext()
    if len(cts) != 1:
        raise CorruptPayloadError(f"{where} must hold 1 ciphertext; got {len(cts)}")
    ct = cts[0]
    if not sealapi.is_valid_for(ct, seal):
        raise CorruptPayloadError(
            f"{where} must be a valid ciphertext for this context (SEAL is_valid_for: "
            "parameters, sizes, every coefficient below its modulus); it is not"
        )
    problems = []
    if ct.size() != 2:
        problems.append(f"polynomial count must be 2; got {ct.size()}")
    if ct.parms_id() != seal.first_parms_id():
        problems.append("level must be the first data level; got another")
    if not ct.is_ntt_form():
        problems.append("must be in NTT form; is not")
    if ct.scale != scale:
        problems.append(f"scale must be {_pow2(scale)}; got {_pow2(ct.scale)}")
    if int(vec.size()) != size:
        problems.append(f"must hold {size} values; got {vec.size()}")
    if problems:
        raise CorruptPayloadError(f"{where} " + "; ".join(problems))
    return vec


__all__ = ["check_ckks_bytes", "load_ckks_vector"]
