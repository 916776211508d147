"""Packing and envelope: pure, fast, no TenSEAL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedai.crypto.envelope import Envelope, PayloadKind, Scheme
from fedai.crypto.packing import ArraySpec, chunk_bounds, flatten, unflatten
from fedai.errors import CorruptPayloadError, KeyMismatchError

FP = bytes(range(32))
MAC = b"k" * 32

float_arrays = st.lists(
    hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        elements={"allow_nan": False, "allow_infinity": False},
    ),
    min_size=0,
    max_size=5,
)


@settings(deadline=None)
@given(float_arrays)
def test_flatten_unflatten_roundtrip_is_exact(arrays: list[np.ndarray]) -> None:
    flat, specs = flatten(arrays)

    back = unflatten(flat, specs)

    assert flat.dtype == np.float64
    assert flat.size == sum(a.size for a in arrays)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back, strict=True):
        assert b.shape == a.shape
        assert b.dtype == a.dtype
        np.testing.assert_array_equal(a, b)


def test_flatten_does_not_mutate_and_rejects_ints() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = a.copy()

    flat, _ = flatten([a])
    flat[:] = -1

    np.testing.assert_array_equal(a, before)
    with pytest.raises(ValueError, match="float16/32/64"):
        flatten([np.arange(3)])


def test_unflatten_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="must hold 6 values"):
        unflatten(np.zeros(5), [ArraySpec((2, 3), 4)])


@given(st.integers(min_value=0, max_value=50_000), st.integers(min_value=1, max_value=9000))
def test_chunk_bounds_tile_the_vector(n_values: int, slots: int) -> None:
    bounds = chunk_bounds(n_values, slots)

    assert len(bounds) == math.ceil(n_values / slots)
    assert [lo for lo, _ in bounds] == list(range(0, n_values, slots))
    assert all(0 < hi - lo <= slots for lo, hi in bounds)
    assert (bounds[-1][1] if bounds else 0) == n_values


specs_strategy = st.lists(
    st.builds(
        ArraySpec,
        st.lists(st.integers(min_value=1, max_value=6), min_size=0, max_size=3).map(tuple),
        st.sampled_from([2, 4, 8]),
    ),
    min_size=1,
    max_size=6,
)


def _envelope(specs: list[ArraySpec], slots: int, kind: PayloadKind, summands: int) -> Envelope:
    return Envelope(
        scheme=Scheme.CKKS,
        kind=kind,
        fingerprint=FP,
        n_values=sum(s.size for s in specs),
        slots=slots,
        n_summands=summands,
        specs=tuple(specs),
    )


@settings(deadline=None)
@given(
    specs_strategy,
    st.integers(min_value=4, max_value=64),
    st.sampled_from(list(PayloadKind)),
    st.integers(min_value=1, max_value=10_000),
)
def test_envelope_roundtrip(
    specs: list[ArraySpec], slots: int, kind: PayloadKind, summands: int
) -> None:
    env = _envelope(specs, slots, kind, summands)
    blobs = [bytes([i % 251]) * (i + 3) for i in range(env.n_blobs)]

    payload = env.to_payload(blobs, mac_key=MAC)
    parsed, body = Envelope.from_payload(
        payload, scheme=Scheme.CKKS, fingerprint=FP, mac_key=MAC, slots=slots
    )

    assert parsed == env
    assert [b.tobytes() for b in body] == blobs
    assert all(a.dtype == np.uint8 and a.ndim == 1 for a in payload)


def _sample_payload() -> list[np.ndarray]:
    env = _envelope([ArraySpec((3, 4), 4), ArraySpec((4,), 4)], 8, PayloadKind.CONTRIBUTION, 1)
    return env.to_payload([b"a" * 40, b"b" * 41], mac_key=MAC)


def _open(payload: list[np.ndarray]) -> Envelope:
    return Envelope.from_payload(payload, scheme=Scheme.CKKS, fingerprint=FP, mac_key=MAC, slots=8)[
        0
    ]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    payload = [a.copy() for a in _sample_payload()]
    which = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    pos = data.draw(st.integers(min_value=0, max_value=payload[which].size - 1))
    delta = data.draw(st.integers(min_value=1, max_value=255))
    payload[which][pos] ^= delta

    with pytest.raises((CorruptPayloadError, KeyMismatchError)):
        _open(payload)


def test_fingerprint_bytes_changed_is_a_key_mismatch() -> None:
    payload = [a.copy() for a in _sample_payload()]
    payload[0][20] ^= 1  # inside the fingerprint (offset 12..43)

    with pytest.raises(KeyMismatchError, match="another key set"):
        _open(payload)


def test_wrong_mac_key_is_rejected() -> None:
    with pytest.raises(CorruptPayloadError, match="authentication tag"):
        Envelope.from_payload(
            _sample_payload(), scheme=Scheme.CKKS, fingerprint=FP, mac_key=b"x" * 32, slots=8
        )


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: [], "at least|header array"),
        (lambda p: p[:1], "ciphertexts"),
        (lambda p: [*p, p[-1]], "ciphertexts"),
        (lambda p: [p[0], p[1], np.zeros(0, np.uint8)], "1\\.\\.|tag"),
        (lambda p: [p[0][:50], *p[1:]], "header"),
        (lambda p: [p[0][:-1], *p[1:]], "header|tag"),
        (lambda p: [np.frombuffer(b"\x00" * 120, np.uint8), *p[1:]], "magic"),
        (lambda p: [p[0].astype(np.float32), *p[1:]], "uint8"),
        (lambda p: [p[0], p[1].reshape(5, 8), p[2]], "1-D uint8"),
        (lambda p: [p[0], p[1], p[2][:-3]], "tag"),
    ],
)
def test_malformed_payloads_are_corrupt(mutate: object, match: str) -> None:
    payload = mutate(_sample_payload())  # type: ignore[operator]

    with pytest.raises(CorruptPayloadError, match=match):
        _open(payload)


def test_wrong_slot_count_and_scheme() -> None:
    payload = _sample_payload()

    with pytest.raises(CorruptPayloadError, match="slots must be 16"):
        Envelope.from_payload(payload, scheme=Scheme.CKKS, fingerprint=FP, mac_key=MAC, slots=16)
    with pytest.raises(KeyMismatchError, match="scheme must be paillier"):
        Envelope.from_payload(payload, scheme=Scheme.PAILLIER, fingerprint=FP, mac_key=MAC, slots=8)


def test_inconsistent_value_count_is_corrupt_even_when_tagged() -> None:
    # A key holder that mislabels its layout: shapes hold 17 values, header claims 16.
    env = Envelope(
        scheme=Scheme.CKKS,
        kind=PayloadKind.CONTRIBUTION,
        fingerprint=FP,
        n_values=16,
        slots=8,
        n_summands=1,
        specs=(ArraySpec((17,), 4),),
    )
    payload = env.to_payload([b"a", b"b"], mac_key=MAC)

    with pytest.raises(CorruptPayloadError, match="shapes must hold 16 values; got 17"):
        _open(payload)
