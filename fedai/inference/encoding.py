"""Parameters and slot layouts shared by the querier and the model holder.

Two SIMD layouts put many queries into one CKKS ciphertext, and neither needs rotations,
so the querier never sends Galois keys (the full set is 33.7 MiB at N=8192):

* :attr:`Layout.ROWS` (few rows, few outputs): query ``i`` fills slots
  ``[i*d, (i+1)*d)`` of a ciphertext, ``slots // d`` queries per ciphertext. For each output
  ``k`` the holder multiplies by ``W[k]`` tiled over the queries and adds a random mask whose
  slots sum to ``b[k]`` within every query's block; the querier decrypts and sums each block.
  The querier sees the masked products ``W[k, j] x_j + r_j``, never ``W`` itself.
* :attr:`Layout.COLUMNS` (many rows or many outputs): feature ``j`` of up to ``slots``
  queries fills one ciphertext, and a constant-1 column carries the bias, so the holder
  computes ``sum_j W[k, j] * ct_j + b[k] * ct_ones`` with plaintext-scalar products only.
  The result is the score itself, one ciphertext per output.

:func:`choose_layout` picks the layout that moves fewer ciphertexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedai.errors import InferenceError


class Layout(StrEnum):
    """How queries are packed into CKKS slots."""

    ROWS = "rows"
    COLUMNS = "columns"


class Activation(StrEnum):
    """Non-linearity the querier applies to a layer's decrypted output."""

    NONE = "none"
    RELU = "relu"


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksProfile:
    """CKKS parameters a model holder accepts (128-bit security: total bits <= 218 at N=8192).

    The two middle 40-bit primes give one rescale for the ROWS product and the headroom
    for the scale-2^80 COLUMNS products, which are never rescaled.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        """Number of CKKS slots per ciphertext (N / 2)."""
        return self.poly_modulus_degree // 2

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
        }


DEFAULT_PROFILE = CkksProfile()


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerInfo:
    """Public shape of one served linear layer."""

    in_features: int
    out_features: int
    activation: Activation = Activation.NONE


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedBatch:
    """Encrypted rows for one layer, as the querier sends them.

    Attributes:
        layout: slot layout of ``ciphertexts``.
        rows: number of query rows encrypted.
        features: features per row (without the COLUMNS bias column).
        ciphertexts: serialized CKKS vectors, in the order :func:`ciphertext_sizes` gives.
    """

    layout: Layout
    rows: int
    features: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedScores:
    """Encrypted layer output, as the holder returns it.

    For ROWS, ciphertext ``c * outputs + k`` holds output ``k`` for the rows of input
    ciphertext ``c`` (masked products, one block per row). For COLUMNS it holds output ``k``
    for the rows of chunk ``c`` (one slot per row).
    """

    layout: Layout
    rows: int
    features: int
    outputs: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)


def rows_per_ciphertext(layout: Layout, features: int, profile: CkksProfile) -> int:
    """Return how many query rows one ciphertext holds.

    Raises:
        InferenceError: if a single row does not fit into one ciphertext.
    """
    if features < 1:
        raise InferenceError(f"features must be >= 1; got {features}")
    if layout is Layout.COLUMNS:
        return profile.slots
    if features > profile.slots:
        raise InferenceError(f"layout rows needs features <= {profile.slots} slots; got {features}")
    return profile.slots // features


def ciphertext_sizes(layout: Layout, rows: int, features: int, profile: CkksProfile) -> list[int]:
    """Return the expected vector size (values encrypted) of each input ciphertext.

    ROWS: one ciphertext per chunk of rows, ``rows_in_chunk * features`` values.
    COLUMNS: for each chunk of rows, ``features + 1`` ciphertexts (the last is the constant-1
    bias column) of ``rows_in_chunk`` values each.
    """
    per = rows_per_ciphertext(layout, features, profile)
    chunks = [min(per, rows - start) for start in range(0, rows, per)]
    if layout is Layout.ROWS:
        return [n * features for n in chunks]
    return [n for n in chunks for _ in range(features + 1)]


def chunk_rows(layout: Layout, rows: int, features: int, profile: CkksProfile) -> list[int]:
    """Return the number of rows in each chunk (one ciphertext group)."""
    per = rows_per_ciphertext(layout, features, profile)
    return [min(per, rows - start) for start in range(0, rows, per)]


def choose_layout(rows: int, features: int, outputs: int, profile: CkksProfile) -> Layout:
    """Pick the layout that moves fewer ciphertexts (both directions) for this layer.

    ROWS: ``ceil(rows / (slots // d)) * (1 + outputs)``; COLUMNS:
    ``ceil(rows / slots) * (d + 1 + outputs)``. Ties go to ROWS (fewer holder operations).
    """
    if features > profile.slots:
        return Layout.COLUMNS
    n_rows_ct = math.ceil(rows / (profile.slots // features))
    n_cols_ct = math.ceil(rows / profile.slots)
    cost_rows = n_rows_ct * (1 + outputs)
    cost_cols = n_cols_ct * (features + 1 + outputs)
    return Layout.ROWS if cost_rows <= cost_cols else Layout.COLUMNS


__all__ = [
    "DEFAULT_PROFILE",
    "Activation",
    "CkksProfile",
    "EncryptedBatch",
    "EncryptedScores",
    "LayerInfo",
    "Layout",
    "choose_layout",
    "chunk_rows",
    "ciphertext_sizes",
    "rows_per_ciphertext",
]
