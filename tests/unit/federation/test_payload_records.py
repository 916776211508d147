"""The one-Array payload container (fedai.federation.records): round trips and hostile bytes.

A reply's payload is untrusted input from a node that holds every key: these tests feed
:func:`record_to_payload` truncated, extended, bit-flipped and hand-made headers and
check it either returns arrays that fit in the bytes that came or raises ProtocolError,
nothing else.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedai.errors import ProtocolError
from fedai.federation.records import PAYLOAD_KEY as KEY
from fedai.federation.records import (
    PAYLOAD_STYPE,
    payload_to_record,
    record_to_payload,
)


def raw(data: bytes, stype: str = PAYLOAD_STYPE) -> ArrayRecord:
    """An ArrayRecord holding ``data`` as the payload Array, whatever it contains."""
    return ArrayRecord({KEY: Array(dtype="uint8", shape=(len(data),), stype=stype, data=data)})


def data_of(record: ArrayRecord) -> bytes:
    return bytes(record[KEY].data)


def sample_payload() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(128, 64)).astype(np.float32),
        rng.normal(size=128).astype(np.float32),
        np.array(3.5, dtype=np.float64),  # 0-d
        rng.integers(0, 256, size=1000, dtype=np.uint8),  # ciphertext bytes
        np.zeros((0, 4), dtype=np.float32),  # empty
    ]


def test_round_trip_keeps_dtype_shape_and_values_bit_for_bit() -> None:
    payload = sample_payload()

    out = record_to_payload(payload_to_record(payload))

    assert len(out) == len(payload)
    for a, b in zip(payload, out, strict=True):
        assert b.dtype == a.dtype
        assert b.shape == a.shape
        assert a.tobytes() == b.tobytes()
        assert b.flags.writeable
        assert b.flags.c_contiguous


def test_a_payload_is_one_array_in_its_record() -> None:
    record = payload_to_record(sample_payload())

    assert list(record) == [KEY]
    assert record[KEY].stype == PAYLOAD_STYPE


def test_big_endian_and_non_contiguous_inputs_come_back_as_the_same_values() -> None:
    a = np.arange(12, dtype=">f8").reshape(3, 4)
    b = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]  # a strided view

    out = record_to_payload(payload_to_record([a, b]))

    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], b)


def test_empty_payload_is_an_empty_record_and_back() -> None:
    assert len(payload_to_record([])) == 0
    assert record_to_payload(ArrayRecord()) == []


@pytest.mark.parametrize("dtype", [np.complex128, np.int64, np.bool_, np.float16])
def test_a_dtype_a_payload_cannot_hold_is_refused_when_packing(dtype: type) -> None:
    with pytest.raises(TypeError, match=str(np.dtype(dtype))):
        payload_to_record([np.zeros(2, dtype=dtype)])


def test_every_truncation_is_a_protocol_error() -> None:
    data = data_of(payload_to_record(sample_payload()[:4]))

    for cut in range(len(data)):
        with pytest.raises(ProtocolError):
            record_to_payload(raw(data[:cut]))


def test_extra_trailing_bytes_are_a_protocol_error() -> None:
    data = data_of(payload_to_record(sample_payload()))

    with pytest.raises(ProtocolError, match="header describes"):
        record_to_payload(raw(data + b"\0"))


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"NOTFEDAI" + struct.pack("<I", 1), "must start with"),
        (b"FEDAIPL1" + struct.pack("<I", 0), "1 to"),
        (b"FEDAIPL1" + struct.pack("<I", 10**6), "1 to"),
        (b"FEDAIPL1" + struct.pack("<I", 1) + struct.pack("<BB", 99, 1), "dtype code"),
        (b"FEDAIPL1" + struct.pack("<I", 1) + struct.pack("<BB", 5, 1), "dtype code"),  # int64
        # a zero-size shape with a huge dimension: numpy would raise ValueError on reshape
        (
            b"FEDAIPL1"
            + struct.pack("<I", 1)
            + struct.pack("<BB", 1, 2)
            + struct.pack("<QQ", 0, 2**62),
            "no dimension may exceed",
        ),
        (b"FEDAIPL1" + struct.pack("<I", 1) + struct.pack("<BB", 1, 200), "dimensions"),
        # a shape whose size overflows 64 bits: refused before any allocation
        (
            b"FEDAIPL1"
            + struct.pack("<I", 1)
            + struct.pack("<BB", 2, 3)
            + struct.pack("<QQQ", 2**63, 2**63, 2**63),
            "no dimension may exceed",
        ),
    ],
)
def test_hand_made_headers_are_refused(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        record_to_payload(raw(header + b"\0" * 16))


def test_a_record_that_is_not_a_fedai_payload_is_refused() -> None:
    flower_style = ArrayRecord([np.zeros(3, dtype=np.float32)])  # Flower's own layout
    two = ArrayRecord({KEY: Array(np.zeros(2)), "x": Array(np.zeros(2))})

    with pytest.raises(ProtocolError, match="exactly one Array"):
        record_to_payload(two)
    with pytest.raises(ProtocolError):
        record_to_payload(flower_style)
    with pytest.raises(ProtocolError, match="stype"):
        record_to_payload(raw(data_of(payload_to_record([np.zeros(2)])), stype="numpy.ndarray"))


def test_random_mutations_fail_only_with_protocol_error_and_never_grow() -> None:
    # Arrange: an authenticated node can send any bytes; flip, overwrite and splice them
    data = bytearray(data_of(payload_to_record(sample_payload()[:4])))
    rng = np.random.default_rng(1)
    outcomes = {"refused": 0, "accepted": 0}

    for _ in range(2000):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, 64))  # mostly the header, where the lengths live
            mutated[at] = int(rng.integers(0, 256))

        # Act
        try:
            out = record_to_payload(raw(bytes(mutated)))
        except ProtocolError:
            outcomes["refused"] += 1
            continue

        # Assert: whatever is accepted is no more than the bytes that came
        outcomes["accepted"] += 1
        assert sum(a.nbytes for a in out) <= len(mutated)

    assert outcomes["refused"] > 0
    assert outcomes["accepted"] > 0


def test_a_shape_needing_more_bytes_than_came_is_refused() -> None:
    header = b"FEDAIPL1" + struct.pack("<I", 1) + struct.pack("<BB", 2, 2)
    header += struct.pack("<QQ", 4, 4)  # 16 float64 = 128 bytes, each dimension small

    with pytest.raises(ProtocolError, match="needs more bytes"):
        record_to_payload(raw(header + b"\0" * 40))
