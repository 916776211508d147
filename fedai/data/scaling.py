"""Feature standardisation (z-score): local statistics, or federated ones pooled by all nodes.

Models and the secure-aggregation bound (``secure_aggregation.update_bound``) assume
features of order one. The built-in sets are scaled at the source; a user's own file is
not (breast cancer's ``area`` column reaches ~2500), so each feature is centred and
divided by its standard deviation, computed on **training splits only** and applied to
both splits (LeCun et al., "Efficient BackProp", 1998, Sec. 4.3: zero-mean,
unit-variance inputs). The test split never informs the statistics.

Which sources are standardised (``data.standardize``, see :func:`resolve`):

* ``auto`` (default): file sources (``csv:``, ``npz:``, a real node's ``data-path``).
  Not the built-in sets (already scaled) and not ``hub:`` images, which the hub loader
  scales to [0, 1] like ``digits``: per-pixel z-scores divide a rarely-inked border
  pixel by its tiny spread (on ``digits``, 10 Dirichlet clients, they reach 25 from
  inputs in [0, 1]).
* ``zscore``: every source. ``none``: no source.

Whose statistics (``data.statistics``, see :func:`statistics_mode`):

* ``local``: each node's own training split (:func:`fit`); nothing leaves the node. Under
  label skew this fails: a node holding mostly one class centres *that class* at 0, so
  nodes disagree on the feature axes (breast cancer, 10 Dirichlet(0.5) clients: 0.70).
* ``federated``: before round 1 every sharing node sends its training split's count
  ``n_i`` and per-feature mean and mean square, encoded with the run's secure-aggregation
  scheme (weighted by ``n_i``, like a model update); the coordinator only adds them, and
  each node derives the pooled mean ``mu = sum n_i m_i / N`` and variance
  ``E[x^2] - mu^2`` (Chan, Golub & LeVeque, "Algorithms for computing the sample
  variance", 1983, for the pooling of moments) and standardises both its splits with
  them (:func:`pooled`). The same statistics as if one party held all training rows.
* ``auto`` (default): ``federated`` when ``privacy.mode = "none"``, else ``local``: the
  moments are not differentially private, so under DP they would be released outside
  the accountant.

Encoding (:func:`to_limbs` / :func:`from_limbs`). Means and mean squares span many orders
of magnitude (``area``'s mean square ~5e5, a smoothness variance ~5e-5), far beyond one
codec's bound and grid (``update_bound`` 100; a grid of 1e-6, or 2**-31 of the bound
under Paillier). So each value ``v`` (``|v| <= BOUND``) is written as
``BOUND * sum_k a_k * step**k`` with limbs ``a_k`` in [-1, 1], each on the codec's grid
``step`` (each limb is the rounding residue of the previous one, divided by ``step``), as
many limbs as :func:`limbs_for` the grid (4 on the default plaintext/CKKS grid 1e-6, 3 on
Paillier's 2**-31). Every limb is encoded as a model value with bound 1, so the codec's
own bounds check, quantisation and headroom apply unchanged (a CKKS sum needs ``N``, not
``N * 1e12``, below its ``2**magnitude_bits``; a Paillier slot holds exactly the
quantised limbs its layout was checked for), and because the decomposition is linear the
weighted average of the limbs is the limbs of the weighted average: the pooled value is
exact up to :data:`PRECISION` (absolute, 1e-12) plus float64 rounding (~1e-16 relative).
CKKS noise flooding (``flood_sigma > 0``) would swamp the leading limb, so nodes do not
share under it (``clients.app``).

A feature that is constant on the training split(s) (standard deviation 0) is only
centred (scale 1), never divided by zero.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import numpy as np

from fedai.config import StandardizeMode, StatisticsMode
from fedai.errors import ConfigError, CorruptPayloadError, DataError

if TYPE_CHECKING:
    from fedai.aggregation import ClientCodec, Payload
    from fedai.config import SecureAggregationSection

#: The values ``data.standardize`` accepts.
MODES: tuple[str, ...] = get_args(StandardizeMode)
#: The values ``data.statistics`` accepts.
STATISTICS_MODES: tuple[str, ...] = get_args(StatisticsMode)
#: Largest |mean| or |mean square| of a feature that can be shared (|x| up to 1e6).
BOUND = 1e12
#: Absolute precision of a pooled value: the limbs reach ``BOUND * step**limbs <= it``.
PRECISION = 1e-12
#: At most this many limbs (a grid coarser than ~0.3 cannot reach :data:`PRECISION`).
MAX_LIMBS = 64
#: Largest total count a pooled aggregate may claim.
MAX_TOTAL_COUNT = 1e12


@dataclass(frozen=True, slots=True)
class Standardizer:
    """Per-feature ``(x - mean) / scale``; ``scale`` is 1 where the feature is constant."""

    mean: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return standardised float32 features; ``x`` is not modified.

        Raises:
            DataError: ``x``'s sample shape differs from the fitted one.
        """
        if tuple(x.shape[1:]) != self.mean.shape:
            raise DataError(
                f"features to standardise must have sample shape {self.mean.shape}; "
                f"got {tuple(x.shape[1:])}"
            )
        out: np.ndarray = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return out.astype(np.float32)


def fit(x_train: np.ndarray) -> Standardizer:
    """Per-feature mean and standard deviation (population, ddof 0) of ``x_train``.

    Computed in float64 over axis 0, so image-shaped features get per-pixel statistics.

    Raises:
        DataError: ``x_train`` holds no sample.
    """
    if len(x_train) == 0:
        raise DataError("standardisation needs at least one training sample; got 0")
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return Standardizer(mean=mean, scale=np.where(std > 0, std, 1.0))


def resolve(mode: str, *, file_source: bool) -> bool:
    """Whether ``data.standardize = mode`` standardises a source.

    Args:
        mode: ``auto``, ``none`` or ``zscore``.
        file_source: The features come from a user's file (``csv:``, ``npz:`` or a
            node's ``data-path``).

    Raises:
        ConfigError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise ConfigError(f"data.standardize must be one of {', '.join(MODES)}; got {mode!r}")
    return mode == "zscore" or (mode == "auto" and file_source)


def statistics_mode(mode: str, *, privacy_mode: str) -> str:
    """Whose statistics standardise the features: ``"federated"`` or ``"local"``.

    Args:
        mode: ``data.statistics`` (``auto``, ``federated`` or ``local``).
        privacy_mode: ``privacy.mode``; ``auto`` is ``federated`` only when it is ``none``.

    Raises:
        ConfigError: ``mode`` is unknown, or ``federated`` is asked for with DP on.
    """
    if mode not in STATISTICS_MODES:
        raise ConfigError(
            f"data.statistics must be one of {', '.join(STATISTICS_MODES)}; got {mode!r}"
        )
    if mode == "federated" and privacy_mode != "none":
        raise ConfigError(
            "data.statistics 'federated' needs privacy.mode 'none' (the shared feature "
            f"moments are not differentially private); got privacy.mode {privacy_mode!r}"
        )
    if mode == "auto":
        return "federated" if privacy_mode == "none" else "local"
    return mode


# ---------------------------------------------------------------------- federated moments
@dataclass(frozen=True, slots=True)
class Moments:
    """One training split's count and per-feature mean and mean square (flattened)."""

    count: int
    mean: np.ndarray
    mean_square: np.ndarray


def moments(x_train: np.ndarray) -> Moments:
    """The count, mean and mean square of every feature of ``x_train`` (float64).

    Raises:
        DataError: no sample, or a value that is not finite.
    """
    if len(x_train) == 0:
        raise DataError("feature statistics need at least one training sample; got 0")
    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    if not np.all(np.isfinite(x)):
        raise DataError("feature statistics need finite features; got NaN or inf")
    return Moments(count=len(x), mean=x.mean(axis=0), mean_square=np.square(x).mean(axis=0))


def _check_step(step: float) -> None:
    if not (math.isfinite(step) and 0 < step <= 0.25):
        raise ConfigError(f"statistics grid step must be in (0, 0.25]; got {step!r}")


def limbs_for(step: float) -> int:
    """Limbs needed on grid ``step`` so that ``BOUND * step**limbs <= PRECISION``.

    Raises:
        ConfigError: ``step`` is not in (0, 0.25] or needs more than :data:`MAX_LIMBS`.
    """
    _check_step(step)
    need = max(1, math.ceil(math.log(PRECISION / BOUND) / math.log(step) - 1e-9))
    if need > MAX_LIMBS:
        raise ConfigError(f"statistics grid step {step:g} needs {need} limbs; at most {MAX_LIMBS}")
    return need


def to_limbs(values: np.ndarray, *, step: float, limbs: int | None = None) -> np.ndarray:
    """Write each value ``v`` as ``BOUND * sum_k a_k step**k``; return the ``a_k``.

    Args:
        values: Any shape, every ``|v| <= BOUND``. Not modified.
        step: The codec's grid (every limb lies on it, so the codec rounds nothing).
        limbs: Number of limbs (default: :func:`limbs_for` ``step``).

    Returns:
        New float64 array of shape ``(limbs, *values.shape)``, entries in [-1, 1].

    Raises:
        DataError: a value is not finite or exceeds :data:`BOUND` (the message quotes
            neither the value nor the feature's data).
    """
    limbs = limbs_for(step) if limbs is None else limbs
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise DataError("feature statistics must be finite to share; got NaN or inf")
    if v.size and float(np.max(np.abs(v))) > BOUND:
        raise DataError(
            f"a feature's mean square must be <= {BOUND:g} to share statistics "
            "(|feature| up to 1e6); this node's data exceed it"
        )
    rest = v / BOUND
    out = np.empty((limbs, *v.shape), dtype=np.float64)
    for k in range(limbs):
        out[k] = np.clip(np.rint(rest / step) * step, -1.0, 1.0)
        rest = (rest - out[k]) / step
    return out


def from_limbs(limbs: np.ndarray, *, step: float) -> np.ndarray:
    """Invert :func:`to_limbs` (also on averaged limbs: the map is linear)."""
    _check_step(step)
    a = np.asarray(limbs, dtype=np.float64)
    out = np.zeros(a.shape[1:], dtype=np.float64)
    for k in reversed(range(a.shape[0])):  # Horner: smallest limb first
        out = out * step + a[k]
    return out * BOUND


def grid_step(section: SecureAggregationSection) -> float:
    """The grid the run's codec puts values of bound 1 on (the limbs' ``step``).

    Paillier quantises ``[-1, 1]`` to ``Q = 2**(r-1) - 1`` levels a side (``r`` =
    ``quantization_bits``), so its grid is ``1/Q``; the plaintext and CKKS codecs round to
    ``round_decimals`` decimals.
    """
    if section.scheme == "paillier":
        return 1.0 / ((1 << (section.quantization_bits - 1)) - 1)
    return 10.0**-section.round_decimals


def share(m: Moments, *, step: float) -> np.ndarray:
    """The limbs a node shares: shape ``(limbs, 2, d)`` for ``[mean, mean square]``.

    The node encodes them with weight ``m.count``; the weighted average the others decode
    is the limbs of the pooled mean and mean square.
    """
    return to_limbs(np.stack([m.mean, m.mean_square]), step=step)


def shapes_of(num_features: int, *, step: float) -> list[tuple[int, ...]]:
    """The layout of a shared statistics payload for ``num_features`` features on grid ``step``."""
    return [(limbs_for(step), 2, int(num_features))]


def check_total_count(total_count: float, *, own_count: int) -> None:
    """An aggregate's total weight must be finite, at least ``own_count``, at most the max.

    Raises:
        CorruptPayloadError: it is not (the node's own count is public: it is announced
            at discovery).
    """
    total = float(total_count)
    if not (math.isfinite(total) and own_count <= total <= MAX_TOTAL_COUNT):
        raise CorruptPayloadError(
            f"federated statistics total count must be in [{own_count} (this node's own "
            f"count), {MAX_TOTAL_COUNT:g}]; got {total_count!r}"
        )


def decode_pooled(
    codec: ClientCodec,
    payload: Payload,
    *,
    total_count: float,
    own_count: int,
    sample_shape: Sequence[int],
    step: float,
) -> Standardizer:
    """Decode an encoded statistics aggregate with ``codec`` and validate it (:func:`pooled`).

    The total count is checked before the codec runs (no decryption for a weight no sum
    can have).

    Raises:
        CorruptPayloadError / KeyMismatchError: the count, the decoding or the values fail.
    """
    check_total_count(total_count, own_count=own_count)
    d = math.prod(int(s) for s in sample_shape)
    (average,) = codec.decode(payload, float(total_count), shapes_of(d, step=step))
    return pooled(
        average,
        total_count=total_count,
        own_count=own_count,
        sample_shape=sample_shape,
        step=step,
    )


def pooled(
    average: np.ndarray,
    *,
    total_count: float,
    own_count: int,
    sample_shape: Sequence[int],
    step: float,
) -> Standardizer:
    """Validate a decoded aggregate and turn it into the pooled :class:`Standardizer`.

    Args:
        average: The decoded weighted average of the nodes' :func:`share` limbs.
        total_count: ``N``, the aggregate's total weight (sum of contributors' counts).
        own_count: This node's training-set size.
        sample_shape: The shape of one sample (the statistics are per feature).
        step: The codec's grid used by :func:`share`.

    Raises:
        CorruptPayloadError: wrong length, non-finite values, a total count below the
            node's own or above :data:`MAX_TOTAL_COUNT`, or a clearly negative variance.
            Messages name the thing, what was expected and what came (never data).
    """
    d = math.prod(int(s) for s in sample_shape)
    a = np.asarray(average, dtype=np.float64)
    expected = (limbs_for(step), 2, d)
    if a.shape != expected:
        raise CorruptPayloadError(
            f"federated statistics must have shape {expected} for {d} feature(s); got {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise CorruptPayloadError("federated statistics must be finite; got NaN or inf")
    check_total_count(total_count, own_count=own_count)
    mean, mean_square = from_limbs(a, step=step)
    var = mean_square - np.square(mean)
    # Float error (float64 moments, limb precision, the subtraction) may leave a zero
    # variance slightly negative; anything beyond that is not a variance. Below ``tol`` the
    # variance cannot be told from 0 (a feature whose std is < 1e-6 of its mean) and the
    # feature is only centred.
    tol = 1e-12 * (1.0 + np.abs(mean_square)) + 8.0 * PRECISION
    if np.any(var < -tol):
        worst = int(np.argmin(var + tol))
        raise CorruptPayloadError(
            f"federated statistics variance must be >= 0; feature {worst} got "
            f"{float(var[worst]):.3g}"
        )
    var = np.where(var > tol, var, 0.0)
    std = np.sqrt(var)
    shape = tuple(int(s) for s in sample_shape)
    return Standardizer(mean=mean.reshape(shape), scale=np.where(std > 0, std, 1.0).reshape(shape))


def digest(arrays: Sequence[np.ndarray], total_weight: float) -> str:
    """SHA-256 of an aggregate's arrays (dtype, shape, bytes) and its total weight."""
    h = hashlib.sha256(repr(float(total_weight)).encode())
    for a in arrays:
        arr = np.ascontiguousarray(a)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


__all__ = [
    "BOUND",
    "MAX_LIMBS",
    "MAX_TOTAL_COUNT",
    "MODES",
    "PRECISION",
    "STATISTICS_MODES",
    "Moments",
    "Standardizer",
    "check_total_count",
    "decode_pooled",
    "digest",
    "fit",
    "from_limbs",
    "grid_step",
    "limbs_for",
    "moments",
    "pooled",
    "resolve",
    "shapes_of",
    "share",
    "statistics_mode",
    "to_limbs",
]
