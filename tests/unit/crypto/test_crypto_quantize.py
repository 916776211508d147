"""BatchCrypt quantisation and packing (pure integer math, no crypto)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedai.crypto.quantize import SlotLayout, pack, quantize_stochastic, to_slots, unpack


def layout(
    value_bits: int = 16, max_total_weight: int = 100, plaintext_bits: int = 2047
) -> SlotLayout:
    return SlotLayout(
        value_bits=value_bits, max_total_weight=max_total_weight, plaintext_bits=plaintext_bits
    )


def test_layout_reserves_ceil_log2_headroom_bits() -> None:
    # BatchCrypt-style: 16-bit values, up to 100 weight units -> 7 headroom bits -> 23-bit slots
    lay = layout()

    assert lay.levels == 2**15 - 1
    assert lay.headroom_bits == 7
    assert lay.slot_bits == 23
    assert lay.slots == 2047 // 23 == 89
    assert layout(max_total_weight=128).headroom_bits == 7
    assert layout(max_total_weight=129).headroom_bits == 8
    assert layout(max_total_weight=1).headroom_bits == 0
    assert lay.plaintexts_for(89) == 1
    assert lay.plaintexts_for(90) == 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"value_bits": 1}, "quantization bits must be in [2, 32]"),
        ({"value_bits": 33}, "quantization bits must be in [2, 32]"),
        ({"max_total_weight": 0}, "max total weight must be in [1, 2**30]"),
        ({"value_bits": 32, "max_total_weight": 2**30 + 1}, "max total weight"),
        ({"value_bits": 32, "max_total_weight": 2**30, "plaintext_bits": 61}, "hold >= 1 slot"),
    ],
)
def test_layout_problems_name_the_limit(kwargs: dict[str, int], needle: str) -> None:
    assert any(needle in p for p in layout(**kwargs).problems())


def test_the_clip_bound_maps_exactly_to_the_extreme_levels() -> None:
    rng = np.random.default_rng(0)
    values = np.array([-2.0, 2.0, 0.0, -2.0, 2.0])

    q = quantize_stochastic(values, bound=2.0, levels=127, rng=rng)

    assert q.tolist() == [-127, 127, 0, -127, 127]
    assert q.dtype == np.int64


@pytest.mark.slow
def test_stochastic_rounding_is_unbiased() -> None:
    # Arrange: a value one third of the way between two levels
    rng = np.random.default_rng(1)
    step = 1.0 / 127
    values = np.full(200_000, 10 * step + step / 3)

    # Act
    q = quantize_stochastic(values, bound=1.0, levels=127, rng=rng)

    # Assert: only the two neighbours, in proportion 2:1, mean within 4 sigma of 10 + 1/3
    assert set(np.unique(q).tolist()) == {10, 11}
    sigma = np.sqrt((1 / 3) * (2 / 3) / values.size)
    assert abs(q.mean() - (10 + 1 / 3)) < 4 * sigma


def test_offset_and_weight_make_slots_non_negative() -> None:
    q = np.array([-127, 0, 127])

    assert to_slots(q, weight=3, levels=127).tolist() == [0, 381, 762]


@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=2, max_value=32),
    st.integers(min_value=1, max_value=2**20),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_pack_then_unpack_is_the_identity(bits: int, weight_cap: int, n: int, seed: int) -> None:
    lay = layout(value_bits=bits, max_total_weight=weight_cap)
    slots = np.random.default_rng(seed).integers(0, 2**lay.slot_bits, n, dtype=np.uint64)

    plaintexts = pack(slots, lay)

    assert len(plaintexts) == lay.plaintexts_for(n)
    assert all(0 <= m < 2**lay.plaintext_bits for m in plaintexts)
    assert np.array_equal(unpack(plaintexts, n, lay), slots)


def test_unpack_rejects_bits_beyond_the_slots() -> None:
    lay = layout()
    plaintexts = pack(np.arange(5, dtype=np.uint64), lay)

    with pytest.raises(ValueError, match="must fit in its 5 slots"):
        unpack([plaintexts[0] | (1 << (5 * 23))], 5, lay)
    with pytest.raises(ValueError, match="need 1 plaintexts; got 2"):
        unpack([0, 0], 5, lay)


def test_sums_of_full_slots_never_carry() -> None:
    # Arrange: W contributions of the largest slot value (every value at +B, weight 1)
    lay = layout(value_bits=8, max_total_weight=37)
    top = to_slots(np.full(10, lay.levels), weight=1, levels=lay.levels)

    # Act: add the packed plaintexts, as Paillier does homomorphically
    total = sum(m for m in pack(top, lay) for _ in range(lay.max_total_weight))

    # Assert
    assert np.array_equal(unpack([total], 10, lay), top * np.uint64(37))
