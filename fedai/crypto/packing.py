"""Flatten model weights into one float64 vector, split it into slot-sized chunks, and back.

Pure functions, no cryptography: the CKKS codec packs the flat vector into 4096-slot
ciphertexts (one chunk per ciphertext), and records each array's shape and dtype so the
aggregate can be rebuilt exactly (the same layout NVFlare's ``HEModelEncryptor`` uses per
layer, here over the whole model so only the last ciphertext is partly empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ArraySpec and FLOAT_DTYPES live in the aggregation seam (a declared layout is a list of
# ArraySpec); re-exported here, where the packing code has always imported them from.
from fedai.aggregation import BOUND_HINT, FLOAT_DTYPES, ArraySpec, layout_of
from fedai.errors import ConfigError


def flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[ArraySpec]]:
    """Concatenate float arrays into one new float64 vector.

    Args:
        arrays: The model's weight arrays, in a fixed order. Not modified.

    Returns:
        The flat float64 vector and one :class:`ArraySpec` per array.

    Raises:
        ValueError: An array is not a floating-point array of 2, 4 or 8 byte items.
    """
    specs = layout_of(arrays, name="weights")
    if not arrays:
        return np.zeros(0, dtype=np.float64), specs
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    return flat, specs


def flatten_bounded(
    arrays: Sequence[np.ndarray], update_bound: float
) -> tuple[np.ndarray, list[ArraySpec]]:
    """:func:`flatten` a client's weights for encoding, checked against the bound.

    Raises:
        ConfigError: A non-float array, no values, a value that is not finite, or one whose
            magnitude exceeds ``update_bound`` (``secure_aggregation.update_bound``).
    """
    try:
        flat, specs = flatten(arrays)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if flat.size == 0:
        raise ConfigError("weights must hold at least one value; got none")
    if not np.all(np.isfinite(flat)):
        raise ConfigError("weights must be finite to encode; got NaN or inf")
    worst = float(np.max(np.abs(flat)))
    if worst > update_bound:
        raise ConfigError(
            f"every |weight value| must be <= secure_aggregation.update_bound "
            f"{update_bound:g}; got {worst:g}; {BOUND_HINT}"
        )
    return flat, specs


def unflatten(flat: np.ndarray, specs: Sequence[ArraySpec]) -> list[np.ndarray]:
    """Split a flat vector back into arrays of the recorded shapes and dtypes.

    Args:
        flat: A vector of exactly ``sum(spec.size)`` values.
        specs: The layout returned by :func:`flatten`.

    Returns:
        New arrays, one per spec, cast to the recorded dtype.

    Raises:
        ValueError: ``flat`` does not hold exactly the number of values the specs need.
    """
    total = sum(s.size for s in specs)
    if flat.ndim != 1 or flat.size != total:
        raise ValueError(f"flat vector must hold {total} values; got shape {flat.shape}")
    out: list[np.ndarray] = []
    start = 0
    for s in specs:
        out.append(flat[start : start + s.size].reshape(s.shape).astype(s.dtype))
        start += s.size
    return out


def chunk_bounds(n_values: int, slots: int) -> list[tuple[int, int]]:
    """Return ``[start, stop)`` bounds that split ``n_values`` into chunks of ``slots``.

    Args:
        n_values: Length of the flat vector (>= 0).
        slots: Values per ciphertext (CKKS: ``poly_modulus_degree / 2``), > 0.

    Returns:
        ``ceil(n_values / slots)`` consecutive bounds; only the last chunk may be short.
    """
    if slots <= 0:
        raise ValueError(f"slots must be > 0; got {slots}")
    return [(lo, min(lo + slots, n_values)) for lo in range(0, n_values, slots)]


__all__ = ["FLOAT_DTYPES", "ArraySpec", "chunk_bounds", "flatten", "flatten_bounded", "unflatten"]
