"""Byte- and wire-level edits: a minimal protobuf codec, TenSEAL vector / context and SEAL
header edits, bit flips, byte sets, spans, truncations and extensions (pure Python).

TenSEAL 0.3.18 serializes a ``CKKSVector`` as ``CKKSVectorProto`` (field 1 packed sizes,
field 2 repeated ciphertexts, each a SEAL blob with a 16-byte header, field 3 the scale as
a double) and a context as ``TenSEALContextProto`` (``tenseal/proto/*.proto``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Mutation = dict[str, Any]

#: SEAL serialization header (16 bytes, little-endian): name -> (offset, width).
SEAL_FIELDS: dict[str, tuple[int, int]] = {
    "magic": (0, 2),
    "header_size": (2, 1),
    "major": (3, 1),
    "minor": (4, 1),
    "compr_mode": (5, 1),
    "reserved": (6, 2),
    "size": (8, 8),
}


class MutationError(Exception):
    """A mutation does not apply to these fixtures (a harness bug, never a finding)."""


# --------------------------------------------------------------------------- protobuf


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if i >= len(buf):
            raise MutationError("protobuf varint truncated")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
    raise MutationError("protobuf varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 2**64 - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass
class PbField:
    """One top-level protobuf field: number, wire type and raw payload."""

    number: int
    wire: int
    payload: bytes | int


def pb_parse(buf: bytes) -> list[PbField]:
    """Parse the top level of a protobuf message (wire types 0, 1, 2, 5).

    Raises:
        MutationError: ``buf`` is not a well-formed message.
    """
    fields: list[PbField] = []
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            fields.append(PbField(number, wire, value))
        elif wire == 1:
            fields.append(PbField(number, wire, buf[i : i + 8]))
            i += 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            fields.append(PbField(number, wire, buf[i : i + n]))
            i += n
        elif wire == 5:
            fields.append(PbField(number, wire, buf[i : i + 4]))
            i += 4
        else:
            raise MutationError(f"protobuf wire type {wire} not handled")
        if i > len(buf):
            raise MutationError("protobuf field truncated")
    return fields


def pb_encode(fields: Sequence[PbField]) -> bytes:
    """Encode top-level fields back into a message."""
    out = bytearray()
    for f in fields:
        out += _varint((f.number << 3) | f.wire)
        if f.wire == 0:
            assert isinstance(f.payload, int)
            out += _varint(f.payload)
        elif f.wire == 2:
            assert isinstance(f.payload, bytes)
            out += _varint(len(f.payload)) + f.payload
        else:
            assert isinstance(f.payload, bytes)
            out += f.payload
    return bytes(out)


def _packed(values: Sequence[int]) -> bytes:
    return b"".join(_varint(v) for v in values)


def _first(fields: list[PbField], number: int) -> int:
    for k, f in enumerate(fields):
        if f.number == number:
            return k
    raise MutationError(f"protobuf field {number} missing")


def _unpack_sizes(fields: list[PbField]) -> list[int]:
    packed = fields[_first(fields, 1)].payload
    if not isinstance(packed, bytes):
        return [packed]
    values, i = [], 0
    while i < len(packed):
        v, i = _read_varint(packed, i)
        values.append(v)
    return values


def mutate_vector_proto(blob: bytes, op: str, arg: Any, donors: dict[str, bytes]) -> bytes:
    """Apply one structured edit to a serialized TenSEAL ``CKKSVectorProto``.

    Ops: ``drop`` (field number), ``dup_ct``, ``sizes`` (packed list), ``sizes_unpacked``
    (list), ``scale`` (float), ``unknown`` (append field 9), ``garbage_ct`` (append a field-2
    entry of ``arg`` random-ish bytes), ``reorder`` (fields reversed: still valid),
    ``ct_from`` (the SEAL blob of donor ``arg`` under this vector's sizes and scale),
    ``len`` (field-2 length prefix set to ``arg`` without changing the bytes).
    """
    fields = pb_parse(blob)
    if op == "drop":
        fields = [f for f in fields if f.number != int(arg)]
    elif op == "dup_ct":
        k = _first(fields, 2)
        fields.insert(k + 1, PbField(2, 2, fields[k].payload))
    elif op == "sizes":
        fields = [f for f in fields if f.number != 1]
        if arg:
            fields.insert(0, PbField(1, 2, _packed(arg)))
    elif op == "sizes_unpacked":
        values = list(arg) if arg != "true" else _unpack_sizes(fields)
        fields = [f for f in fields if f.number != 1]
        fields[0:0] = [PbField(1, 0, int(v)) for v in values]
    elif op == "scale":
        fields = [f for f in fields if f.number != 3]
        fields.append(PbField(3, 1, struct.pack("<d", float(arg))))
    elif op == "unknown":
        fields.append(PbField(9, 0, 1))
    elif op == "garbage_ct":
        fields.append(PbField(2, 2, filler("random", int(arg), salt=7)))
    elif op == "reorder":
        fields = fields[::-1]
    elif op == "ct_from":
        donor = pb_parse(donors[str(arg)])
        k = _first(fields, 2)
        fields[k] = PbField(2, 2, donor[_first(donor, 2)].payload)
    elif op == "len":
        k = _first(fields, 2)
        head = pb_encode(fields[:k])
        payload = fields[k].payload
        assert isinstance(payload, bytes)
        return head + b"\x12" + _varint(int(arg)) + payload + pb_encode(fields[k + 1 :])
    else:
        raise MutationError(f"unknown protobuf op {op!r}")
    return pb_encode(fields)


def mutate_seal_header(blob: bytes, name: str, value: int) -> bytes:
    """Set one field of the SEAL header of the vector's first ciphertext."""
    fields = pb_parse(blob)
    k = _first(fields, 2)
    seal = fields[k].payload
    assert isinstance(seal, bytes)
    offset, width = SEAL_FIELDS[name]
    if len(seal) < offset + width:
        raise MutationError("SEAL blob shorter than its header")
    patched = seal[:offset] + int(value).to_bytes(width, "little") + seal[offset + width :]
    fields[k] = PbField(2, 2, patched)
    return pb_encode(fields)


def mutate_context_proto(blob: bytes, op: str, value: Any) -> bytes:
    """Edit one field of a serialized ``TenSEALContextProto``.

    Ops: ``auto_flags`` (``public_context.auto_flags``: bit 0 auto_relin, 1 auto_rescale,
    2 auto_mod_switch), ``scale`` (``public_context.scale``), ``encryption_type``,
    ``drop_public`` (remove ``public_context``).
    """
    fields = pb_parse(blob)
    if op == "encryption_type":
        fields = [f for f in fields if f.number != 4] + [PbField(4, 0, int(value))]
        return pb_encode(fields)
    k = _first(fields, 2)
    if op == "drop_public":
        return pb_encode(fields[:k] + fields[k + 1 :])
    inner_raw = fields[k].payload
    assert isinstance(inner_raw, bytes)
    inner = pb_parse(inner_raw)
    if op == "auto_flags":
        inner = [f for f in inner if f.number != 2] + [PbField(2, 0, int(value))]
    elif op == "scale":
        inner = [f for f in inner if f.number != 3] + [PbField(3, 1, struct.pack("<d", value))]
    else:
        raise MutationError(f"unknown context op {op!r}")
    fields[k] = PbField(2, 2, pb_encode(sorted(inner, key=lambda f: f.number)))
    return pb_encode(fields)


# --------------------------------------------------------------------------- bytes


def filler(kind: str, n: int, *, salt: int) -> bytes:
    if kind == "zero":
        return bytes(n)
    if kind == "ff":
        return b"\xff" * n
    rng = np.random.default_rng([salt, n])
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _byte_value(kind: str | int, salt: int) -> int:
    if isinstance(kind, int):
        return kind
    if kind == "zero":
        return 0
    if kind == "ff":
        return 0xFF
    return int(np.random.default_rng([salt, 99]).integers(0, 256))


def flip_bit(data: bytes, pos: int, bit: int) -> bytes:
    """Return ``data`` with bit ``bit`` of byte ``pos`` flipped."""
    if not 0 <= pos < len(data):
        raise MutationError(f"position {pos} outside {len(data)} bytes")
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def set_byte(data: bytes, pos: int, value: int) -> bytes:
    """Return ``data`` with byte ``pos`` set to ``value``."""
    if not 0 <= pos < len(data):
        raise MutationError(f"position {pos} outside {len(data)} bytes")
    out = bytearray(data)
    out[pos] = value
    return bytes(out)


def truncate(data: bytes, spec: dict[str, Any]) -> bytes:
    """Cut ``data`` to ``spec["n"]`` bytes, ``len - spec["minus"]`` or ``spec["frac"]``."""
    if "n" in spec:
        n = int(spec["n"])
    elif "minus" in spec:
        n = len(data) - int(spec["minus"])
    else:
        n = int(len(data) * float(spec["frac"]))
    return data[: max(0, min(n, len(data) - 1))]


def extend(data: bytes, count: int, fill: str) -> bytes:
    """Append ``count`` bytes (``zero``, ``ff``, ``random``) or a copy of itself (``self``)."""
    if fill == "self":
        return data + data[:count]
    return data + filler(fill, count, salt=count)


def edit_bytes(data: bytes, m: Mutation, donors: dict[str, bytes]) -> bytes:
    """Apply a byte-level edit named by ``m["op"]`` to ``data``."""
    op = m["op"]
    if op == "bitflip":
        return flip_bit(data, int(m["pos"]), int(m["bit"]))
    if op == "byteset":
        return set_byte(data, int(m["pos"]), _byte_value(m["value"], int(m["pos"])))
    if op == "span":
        pos, count = int(m["pos"]), int(m["count"])
        if not 0 <= pos < len(data):
            raise MutationError(f"position {pos} outside {len(data)} bytes")
        fill = filler(str(m["fill"]), count, salt=pos)
        return data[:pos] + fill[: len(data) - pos] + data[pos + count :]
    if op == "truncate":
        return truncate(data, m["spec"])
    if op == "extend":
        return extend(data, int(m["count"]), str(m["fill"]))
    if op == "pb":
        return mutate_vector_proto(data, str(m["pb"]), m.get("arg"), donors)
    if op == "seal":
        return mutate_seal_header(data, str(m["field"]), int(m["value"]))
    raise MutationError(f"unknown byte op {op!r}")


__all__ = [
    "SEAL_FIELDS",
    "Mutation",
    "MutationError",
    "PbField",
    "edit_bytes",
    "extend",
    "filler",
    "flip_bit",
    "mutate_context_proto",
    "mutate_seal_header",
    "mutate_vector_proto",
    "pb_encode",
    "pb_parse",
    "set_byte",
    "truncate",
]
