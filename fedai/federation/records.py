"""Conversions between fedai payloads and Flower records.

A payload (a list of arrays: model values, or ciphertext bytes as ``uint8``) travels as
**one** Flower ``Array`` in its ``ArrayRecord``, not one ``Array`` per entry. Flower
stores and moves every ``Array`` and every ``ArrayChunk`` as a separate object, each a
request of its own between ServerApp, SuperLink and SuperNode: a quickstart train message
was 16 objects, now 6 (Message, RecordDict, ArrayRecord, ConfigRecord, Array,
ArrayChunk), which is most of a round's time on real nodes.

The ``Array`` has ``stype = "fedai.payload/1"`` and ``data`` laid out as::

    magic b"FEDAIPL1" | u32 count | count x (u8 dtype code, u8 ndim, ndim x u64 dim) | data

(little endian; the entries' bytes follow the header back to back, C order). It is read
by :func:`record_to_payload` with ``struct`` and ``numpy.frombuffer`` only, after every
count, code and size has been checked against the bytes that came (a reply is untrusted
input): never ``numpy.load`` and never pickle.
"""

from __future__ import annotations

import struct

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedai.aggregation import Payload
from fedai.errors import ProtocolError
from fedai.federation import keys

PAYLOAD_STYPE = "fedai.payload/1"
PAYLOAD_KEY = "payload"  # the one Array's key in its ArrayRecord
_MAGIC = b"FEDAIPL1"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<BB")
_DIM = struct.Struct("<Q")
#: dtype code -> dtype (little endian): what a payload may hold, nothing else (model values
#: in float32/float64, ciphertext envelopes as uint8).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("|u1"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
MAX_ENTRIES = 65_536  # arrays in one payload
MAX_NDIM = 32  # numpy's own limit is 64
MAX_PAYLOAD_BYTES = 1 << 34  # 16 GiB: far beyond any model or ciphertext here


def payload_to_record(payload: Payload) -> ArrayRecord:
    """Pack a payload (list of arrays) into an ArrayRecord holding one ``Array``.

    An empty payload is an empty ArrayRecord.

    Raises:
        TypeError: an entry's dtype is not one a payload may hold (a programming error).
    """
    if len(payload) == 0:
        return ArrayRecord()
    header = [_MAGIC, _COUNT.pack(len(payload))]
    blobs: list[bytes] = []
    for a in payload:
        arr = np.asarray(a)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = _CODES.get(np.dtype(dtype))
        if code is None:
            raise TypeError(f"a payload cannot hold dtype {arr.dtype}; allowed: {_allowed()}")
        header.append(_ENTRY.pack(code, arr.ndim))
        header.extend(_DIM.pack(d) for d in arr.shape)
        blobs.append(np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes())
    data = b"".join(header + blobs)
    array = Array(dtype="uint8", shape=(len(data),), stype=PAYLOAD_STYPE, data=data)
    return ArrayRecord({PAYLOAD_KEY: array})


def record_to_payload(record: ArrayRecord) -> Payload:
    """Unpack an ArrayRecord made by :func:`payload_to_record` into its arrays, in order.

    Every array is a fresh, writable copy. Checks everything before reading an array.

    Raises:
        ProtocolError: the record is not a fedai payload, or its bytes do not match what
            its header says (the message names what was expected and what came).
    """
    if len(record) == 0:
        return []
    if set(record) != {PAYLOAD_KEY}:
        raise ProtocolError(
            f"payload ArrayRecord must hold exactly one Array {PAYLOAD_KEY!r}; "
            f"got {len(record)} entr{'y' if len(record) == 1 else 'ies'}"
        )
    array = record[PAYLOAD_KEY]
    if array.stype != PAYLOAD_STYPE:
        raise ProtocolError(
            f"payload Array must have stype {PAYLOAD_STYPE!r}; got {str(array.stype)[:40]!r}"
        )
    data = array.data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"payload Array data must be bytes; got {type(data).__name__}")
    return _unpack(memoryview(data))


def _unpack(data: memoryview) -> Payload:
    size = len(data)
    if size > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload must be at most {MAX_PAYLOAD_BYTES} bytes; got {size}")
    at = len(_MAGIC) + _COUNT.size
    if size < at or bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise ProtocolError(f"payload must start with {_MAGIC!r} and a count; got {size} bytes")
    (count,) = _COUNT.unpack_from(data, len(_MAGIC))
    if not 1 <= count <= MAX_ENTRIES:
        raise ProtocolError(f"payload must hold 1 to {MAX_ENTRIES} arrays; header says {count}")
    layout: list[tuple[np.dtype, tuple[int, ...], int]] = []
    total = 0
    for i in range(count):
        if at + _ENTRY.size > size:
            raise ProtocolError(f"payload header is truncated at array {i} of {count}")
        code, ndim = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        if code not in _DTYPES:
            raise ProtocolError(
                f"payload array {i}: dtype code must be one of {sorted(_DTYPES)}; got {code}"
            )
        if ndim > MAX_NDIM:
            raise ProtocolError(f"payload array {i}: at most {MAX_NDIM} dimensions; got {ndim}")
        if at + ndim * _DIM.size > size:
            raise ProtocolError(f"payload header is truncated at array {i} of {count}")
        shape = tuple(_DIM.unpack_from(data, at + k * _DIM.size)[0] for k in range(ndim))
        at += ndim * _DIM.size
        if any(dim > size for dim in shape):  # also beside a 0: numpy's own limits
            raise ProtocolError(
                f"payload array {i}: no dimension may exceed the {size} bytes that came; "
                f"got shape {shape}"
            )
        nbytes = _DTYPES[code].itemsize
        for dim in shape:  # Python ints: no overflow; stop as soon as it cannot fit
            nbytes *= dim
            if nbytes > size:
                break
        if nbytes > size:
            raise ProtocolError(
                f"payload array {i}: shape {shape} needs more bytes than the {size} that came"
            )
        layout.append((_DTYPES[code], shape, nbytes))
        total += nbytes
    if at + total != size:
        raise ProtocolError(f"payload header describes {at + total} bytes; got {size}")
    out: Payload = []
    for dtype, shape, nbytes in layout:
        flat = np.frombuffer(data[at : at + nbytes], dtype=dtype)
        out.append(flat.reshape(shape).copy())
        at += nbytes
    return out


def _allowed() -> str:
    return ", ".join(str(d) for d in _DTYPES.values())


def reply_payload(message: Message) -> Payload:
    """Return the payload carried by a reply; raises ProtocolError if it has none."""
    content = message.content
    if keys.REC_ARRAYS not in content.array_records:
        raise ProtocolError(
            f"reply must carry an ArrayRecord {keys.REC_ARRAYS!r}; got {sorted(content.keys())}"
        )
    return record_to_payload(content.array_records[keys.REC_ARRAYS])


def as_int(value: object, *, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A record value that must be an integer in ``[lo, hi]`` (a reply is untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ProtocolError(f"{what} must be an integer; got {_short(value)}")
    try:
        out = int(value)
    except (ValueError, OverflowError) as err:
        raise ProtocolError(f"{what} must be an integer; got {_short(value)}") from err
    if isinstance(value, float) and out != value:
        raise ProtocolError(f"{what} must be an integer; got {value!r}")
    _check_range(out, what, lo, hi)
    return out


def as_float(
    value: object, *, what: str, lo: float | None = None, hi: float | None = None
) -> float:
    """A record value that must be a finite number in ``[lo, hi]`` (untrusted input)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what} must be a number; got {_short(value)}")
    try:
        out = float(value)
    except OverflowError as err:  # an int beyond float range
        raise ProtocolError(f"{what} must be finite; got {_short(value)}") from err
    if out != out or out in (float("inf"), float("-inf")):
        raise ProtocolError(f"{what} must be finite; got {_short(value)}")
    _check_range(out, what, lo, hi)
    return out


def _check_range(value: float, what: str, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ProtocolError(f"{what} must be in {bounds}; got {value!r}")


def _short(value: object) -> str:
    """A bounded rendering of an untrusted value for an error message."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr may exceed int-str limits
    text = repr(value) if isinstance(value, int | float | bool) else type(value).__name__
    if isinstance(value, str):
        text = repr(value[:60])
    return text if len(text) <= 60 else f"{text[:57]}..."


__all__ = [
    "PAYLOAD_STYPE",
    "as_float",
    "as_int",
    "payload_to_record",
    "record_to_payload",
    "reply_payload",
]
