"""Quantise model values to integers and pack many into one plaintext (BatchCrypt).

Pure integer math, no cryptography: any additively homomorphic scheme over integers
(Paillier here) can add packed plaintexts slot by slot, as in BatchCrypt (Zhang, Li, Xia,
Wang & Liu, "BatchCrypt: Efficient Homomorphic Encryption for Cross-Silo Federated
Learning", USENIX ATC 2020). The steps, for one client ``i`` with aggregation weight
``n_i`` (a positive integer, e.g. its example count):

1. **Quantise** each value ``v`` (``|v| <= B``, the public bound) to ``r`` bits with
   *stochastic rounding*: ``x = v * Q / B`` with ``Q = 2**(r-1) - 1`` levels per sign,
   then ``q = floor(x) + [u < x - floor(x)]`` for a uniform ``u``. ``E[q] = x``, so the
   rounding is unbiased (Gupta, Agrawal, Gopalakrishnan & Narayanan, ICML 2015) and
   its error averages out over clients and rounds instead of accumulating as a bias.
   ``q`` lies in ``[-Q, Q]``; ``v = +-B`` maps exactly to ``+-Q``.
2. **Offset and weight**: ``s = n_i * (q + Q)``, an integer in ``[0, 2 Q n_i]``.
3. **Headroom**: the coordinator adds slots of all contributions; with total weight
   ``N = sum n_i <= W`` (the configured maximum) a slot sum is at most
   ``2 Q N < 2**r * 2**h`` with ``h = ceil(log2 W)`` headroom bits, so a slot of
   ``w = r + h`` bits can never carry into its neighbour. (BatchCrypt reserves
   ``log2(#clients)`` bits; fedai weights by example counts, so the bound is on ``N``.)
4. **Pack** ``k = floor(P / w)`` slots into one plaintext integer
   ``m = sum_t s_t 2**(w t)``, with ``P`` the plaintext bits that stay below the modulus
   (``bit_length(n) - 1`` for Paillier), so every sum of plaintexts stays below ``n``.

Decoding inverts it: unpack the slot sums ``S``, check ``0 <= S <= 2 Q N`` (anything else
means a corrupt ciphertext), and ``sum_i n_i q_i = S - Q N`` exactly; the average is
``(S - Q N) * B / (Q N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Slot values are handled as uint64: value bits + headroom bits must fit in 62.
MAX_SLOT_BITS = 62
MIN_VALUE_BITS = 2
MAX_VALUE_BITS = 32
MAX_TOTAL_WEIGHT = 2**30


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotLayout:
    """How quantised values are laid out in plaintext integers.

    Attributes:
        value_bits: ``r``, bits per quantised value (sign included).
        max_total_weight: ``W``, the largest total weight a sum may carry.
        plaintext_bits: ``P``, bits of a plaintext that stay below the modulus.
    """

    value_bits: int
    max_total_weight: int
    plaintext_bits: int

    @property
    def levels(self) -> int:
        """``Q = 2**(r-1) - 1``: quantisation levels on each side of zero."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def headroom_bits(self) -> int:
        """``h = ceil(log2 W)``: carry bits reserved per slot."""
        return max(0, math.ceil(math.log2(self.max_total_weight)))

    @property
    def slot_bits(self) -> int:
        """``w = r + h``: bits per slot."""
        return self.value_bits + self.headroom_bits

    @property
    def slots(self) -> int:
        """``k = floor(P / w)``: values per plaintext."""
        return self.plaintext_bits // self.slot_bits

    def problems(self) -> list[str]:
        """Every reason this layout cannot work (empty if it can)."""
        out: list[str] = []
        if not MIN_VALUE_BITS <= self.value_bits <= MAX_VALUE_BITS:
            out.append(
                f"quantization bits must be in [{MIN_VALUE_BITS}, {MAX_VALUE_BITS}]; "
                f"got {self.value_bits}"
            )
        if not 1 <= self.max_total_weight <= MAX_TOTAL_WEIGHT:
            out.append(f"max total weight must be in [1, 2**30]; got {self.max_total_weight}")
        elif self.slot_bits > MAX_SLOT_BITS:
            out.append(
                f"quantization bits + headroom bits must be <= {MAX_SLOT_BITS}; got "
                f"{self.value_bits} + {self.headroom_bits}"
            )
        if not out and self.slots < 1:
            out.append(
                f"a plaintext of {self.plaintext_bits} bits must hold >= 1 slot of "
                f"{self.slot_bits} bits"
            )
        return out

    def plaintexts_for(self, n_values: int) -> int:
        """Number of plaintexts needed for ``n_values`` values."""
        return -(-n_values // self.slots)


def quantize_stochastic(
    values: np.ndarray, *, bound: float, levels: int, rng: np.random.Generator
) -> np.ndarray:
    """Map ``values`` in ``[-bound, bound]`` to integers in ``[-levels, levels]``, unbiased.

    Args:
        values: Float values, each ``|v| <= bound`` (checked by the caller). Not modified.
        bound: The public bound ``B``.
        levels: ``Q``; ``+-bound`` maps to ``+-Q``.
        rng: Source of the rounding coins (OS entropy in production; seeded in tests).

    Returns:
        New int64 array ``q`` with ``E[q] = values * levels / bound``.
    """
    x = np.asarray(values, dtype=np.float64) * (levels / bound)
    low = np.floor(x)
    q = low + (rng.random(x.shape) < (x - low))
    out: np.ndarray = np.clip(q, -levels, levels).astype(np.int64)
    return out


def to_slots(q: np.ndarray, *, weight: int, levels: int) -> np.ndarray:
    """Offset and weight quantised values: ``weight * (q + levels)`` as uint64."""
    offset = (np.asarray(q, dtype=np.int64) + levels).astype(np.uint64)
    out: np.ndarray = offset * np.uint64(weight)
    return out


def pack(slots: np.ndarray, layout: SlotLayout) -> list[int]:
    """Pack slot values (each ``< 2**slot_bits``) into plaintext integers.

    Args:
        slots: uint64 slot values, in order.
        layout: The slot layout.

    Returns:
        ``layout.plaintexts_for(len(slots))`` integers; slot ``t`` of plaintext ``j`` is
        ``slots[j * k + t]`` at bit offset ``t * slot_bits``.
    """
    width, k = layout.slot_bits, layout.slots
    flat = [int(v) for v in np.asarray(slots, dtype=np.uint64).tolist()]
    out: list[int] = []
    for lo in range(0, len(flat), k):
        m = 0
        for v in reversed(flat[lo : lo + k]):
            m = (m << width) | v
        out.append(m)
    return out


def unpack(plaintexts: Sequence[int], n_values: int, layout: SlotLayout) -> np.ndarray:
    """Unpack plaintext integers into ``n_values`` slot values (uint64).

    Args:
        plaintexts: Decrypted (summed) plaintexts, ``layout.plaintexts_for(n_values)``.
        n_values: Number of values packed.
        layout: The slot layout.

    Returns:
        The slot values.

    Raises:
        ValueError: A plaintext has bits beyond its slots, or unused slots of the last
            plaintext are not zero (the plaintexts were not packed with this layout).
    """
    width, k = layout.slot_bits, layout.slots
    if len(plaintexts) != layout.plaintexts_for(n_values):
        raise ValueError(
            f"{n_values} values need {layout.plaintexts_for(n_values)} plaintexts; "
            f"got {len(plaintexts)}"
        )
    mask = (1 << width) - 1
    out: list[int] = []
    for j, m in enumerate(plaintexts):
        used = min(k, n_values - j * k)
        if m < 0 or m >> (used * width):
            raise ValueError(
                f"plaintext {j} must fit in its {used} slots of {width} bits; it has "
                f"{max(0, int(m).bit_length() - used * width)} more bits"
            )
        out.extend((m >> (t * width)) & mask for t in range(used))
    return np.array(out, dtype=np.uint64)


__all__ = [
    "MAX_SLOT_BITS",
    "MAX_TOTAL_WEIGHT",
    "MAX_VALUE_BITS",
    "MIN_VALUE_BITS",
    "SlotLayout",
    "pack",
    "quantize_stochastic",
    "to_slots",
    "unpack",
]
