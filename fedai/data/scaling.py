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
  ``n_i`` and per-feature mean and mean square of its features *normalised to the public
  bounds* ``data.feature_bounds`` (below), encoded with the run's secure-aggregation
  scheme (weighted by ``n_i``, like a model update); the coordinator only adds them, and
  each node derives the pooled mean ``mu = sum n_i m_i / N`` and variance
  ``E[u^2] - mu^2`` (Chan, Golub & LeVeque, "Algorithms for computing the sample
  variance", 1983, for the pooling of moments), checks them (:func:`pooled`) and
  standardises both its splits with them, clipped to the bounds. The same statistics as
  if one party held all (clipped) training rows. Needs ``data.feature_bounds``.
* ``auto`` (default): ``federated`` when ``privacy.mode = "none"`` and feature bounds are
  declared, else ``local``: the moments are not differentially private (under DP they
  would be released outside the accountant), and without bounds one node's moments can
  move the pooled ones arbitrarily (a well-formed claim of ``E[x^2] = 1e12`` squashed
  every feature and took breast cancer from 0.965 to 0.628).

Bounds (:class:`FeatureBounds`). ``data.feature_bounds`` declares ``[l_f, h_f]`` per
feature (or one pair for all); a real node's operator may set ``feature-bounds`` (a JSON
file of the same shape) in its node config: the node then shares and uses federated
statistics only if the run's bounds lie within its own (the coordinator may narrow them,
never widen them), else it declines and standardises with its own statistics. Every
sharing node clips ``x`` to the bounds and shares the moments of
``u = (clip(x) - l) / (h - l)`` in [0, 1]. Then (:func:`check_moments`), for every
feature, an honest node's and so the pooled ``(m, s) = (E[u], E[u^2])`` satisfy

* ``0 <= m <= 1`` (the mean lies within the bounds) and
* ``m^2 <= s <= m``: variance >= 0, and at most ``(1 - m) m``, the Bhatia-Davis bound
  ``Var <= (h - mu)(mu - l)`` for a variable in ``[l, h]`` (Bhatia & Davis, "A better
  bound on the variance", The American Mathematical Monthly 107(4), 2000).

These pairs form a convex set, so a weighted average of valid moments is valid, and a
node replacing its moments by any valid ones moves the pooled mean of feature ``f`` by
at most ``(n_i / N) (h_f - l_f)`` (:func:`influence_bound`): ``mu' - mu = (n_i / N)
(m_i' - m_i)`` with both in [0, 1]. Where those checks run: in the clear the coordinator
checks each node's moments alone and leaves a failing node out (``server.statistics``);
under CKKS or Paillier it cannot, so every contributor checks the *sum* (and, knowing its
own moments, that the rest of the sum is valid too) before round 1 and a refusal turns
the run's statistics local for every node, recorded in ``results.json``; every node checks
the sum again before it standardises. An encrypted contribution is not range-checked on
its own (that needs zero-knowledge range proofs), so under HE a node that encodes values
outside [0, 1] whose sum (and every contributor's rest) still passes can move the pooled
mean anywhere within the bounds, not just its weight share; the weight share ``n_i / N``
itself rests on announced counts (``data.max_statistics_weight_share`` caps it at the
coordinator).

Encoding (:func:`to_limbs` / :func:`from_limbs`). A normalised mean square of a narrow
feature under wide bounds is tiny (breast cancer's smoothness, std 0.014, under one
``[0, 5000]`` pair has a variance of ~8e-12 in ``u``), far below one codec's grid
(``update_bound`` 100; a grid of 1e-6, or 2**-31 of the bound under Paillier). So each
value ``v`` (``|v| <= BOUND``) is written as ``BOUND * sum_k a_k * step**k`` with limbs
``a_k`` in [-1, 1], each on the codec's grid ``step`` (each limb is the rounding residue
of the previous one, divided by ``step``), as many limbs as :func:`limbs_for` the grid (3
on the default plaintext/CKKS grid 1e-6, 2 on Paillier's 2**-31). Every limb is encoded as
a model value with bound 1, so the codec's own bounds check, quantisation and headroom
apply unchanged, and because the decomposition is linear the weighted average of the
limbs is the limbs of the weighted average: the pooled value is exact up to
:data:`PRECISION` (absolute, 1e-18 of the range squared) plus float64 rounding. CKKS noise
flooding (``flood_sigma > 0``) would swamp the leading limb, so nodes do not share under it
(``clients.app``).

A feature that is constant on the training split(s) (standard deviation 0) is only
centred (scale 1), never divided by zero.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np

from fedai.aggregation import ArraySpec
from fedai.config import DataSection, StandardizeMode, StatisticsMode
from fedai.errors import ConfigError, CorruptPayloadError, DataError

if TYPE_CHECKING:
    from fedai.aggregation import ClientCodec, Payload, Shapes
    from fedai.config import SecureAggregationSection

#: The values ``data.standardize`` accepts.
MODES: tuple[str, ...] = get_args(StandardizeMode)
#: The values ``data.statistics`` accepts.
STATISTICS_MODES: tuple[str, ...] = get_args(StatisticsMode)
#: Largest |value| the limbs encode: normalised means and mean squares lie in [0, 1].
BOUND = 1.0
#: Absolute precision of a pooled value: the limbs reach ``BOUND * step**limbs <= it``.
PRECISION = 1e-18
#: Slack of the range checks on normalised moments (float64 and limb rounding are ~1e-16).
TOLERANCE = 1e-12
#: Node-config key: a JSON file of the node's own feature bounds (as ``data.feature_bounds``).
NODE_FEATURE_BOUNDS = "feature-bounds"
#: At most this many limbs (a grid coarser than ~0.3 cannot reach :data:`PRECISION`).
MAX_LIMBS = 64
#: Largest total count a pooled aggregate may claim.
MAX_TOTAL_COUNT = 1e12


class StatisticsBoundsError(CorruptPayloadError):
    """Pooled (or one node's) normalised moments fail a check of :func:`check_moments`.

    Attributes:
        check: Which check failed (a short phrase; never data).
    """

    def __init__(self, message: str, *, check: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True, slots=True)
class FeatureBounds:
    """Public per-feature bounds ``[low, high]`` (one pair: every feature).

    Attributes:
        pairs: ``(low, high)`` per flattened feature, or a single pair; ``low < high``.
    """

    pairs: tuple[tuple[float, float], ...]

    @classmethod
    def from_text(cls, text: str, *, what: str) -> FeatureBounds:
        """Parse JSON ``[low, high]`` or ``[[low, high], ...]``.

        Raises:
            ConfigError: naming ``what``, the expected shape and what came.
        """
        return cls(DataSection.parse_feature_bounds(text, what=what))

    @classmethod
    def from_config(cls, data: DataSection) -> FeatureBounds | None:
        """The run's declared bounds (``data.feature_bounds``), or None when none are."""
        if not data.feature_bounds:
            return None
        return cls.from_text(data.feature_bounds, what="data.feature_bounds")

    @classmethod
    def from_file(cls, path: str) -> FeatureBounds:
        """A node's own bounds: the JSON file its ``feature-bounds`` node config names.

        Read once per process (an operator's change takes effect on restart).

        Raises:
            ConfigError: the file cannot be read or is not bounds (the message names the
                setting and the problem, never the file's contents).
        """
        return _bounds_file(str(path))

    def arrays(self, num_features: int) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` as float64 arrays of ``num_features`` (a single pair broadcast).

        Raises:
            ConfigError: as many pairs as neither 1 nor ``num_features``.
        """
        if len(self.pairs) not in (1, num_features):
            raise ConfigError(
                f"data.feature_bounds must hold 1 pair or one per feature ({num_features}); "
                f"got {len(self.pairs)}"
            )
        pairs = np.asarray(self.pairs, dtype=np.float64)
        pairs = np.broadcast_to(pairs, (num_features, 2))
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def narrowing(self, limit: FeatureBounds) -> str | None:
        """None if these bounds lie within ``limit`` on every feature; else why not.

        Args:
            limit: A node's own bounds (its ``feature-bounds``).
        """
        n = max(len(self.pairs), len(limit.pairs))
        if len(self.pairs) not in (1, n) or len(limit.pairs) not in (1, n):
            return (
                f"data.feature_bounds has {len(self.pairs)} pair(s), the node's "
                f"{NODE_FEATURE_BOUNDS} {len(limit.pairs)}: they must agree (or one be 1)"
            )
        lo, hi = self.arrays(n)
        lim_lo, lim_hi = limit.arrays(n)
        wider = int(np.count_nonzero((lo < lim_lo) | (hi > lim_hi)))
        if wider:
            where = "every feature" if n == 1 else f"{wider} feature(s)"
            return f"data.feature_bounds is wider than the node's {NODE_FEATURE_BOUNDS} on {where}"
        return None


@functools.lru_cache(maxsize=8)
def _bounds_file(path: str) -> FeatureBounds:
    what = f"node_config {NODE_FEATURE_BOUNDS}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"{what} must name a readable JSON file; {reason}") from err
    try:
        return FeatureBounds.from_text(text, what=what)
    except ConfigError as err:  # the parser quotes the text: keep the file's contents out
        raise ConfigError(
            f"{what} must hold JSON [low, high] or [[low, high], ...] with finite low < high; "
            f"the file does not ({len(err.problems)} problem(s))"
        ) from None


@dataclass(frozen=True, slots=True)
class Standardizer:
    """Per-feature ``(clip(x, low, high) - mean) / scale``; ``scale`` is 1 where constant.

    ``low``/``high`` (both or neither) are the declared feature bounds of federated
    statistics: features are clipped to them before standardising, as they were before
    the moments were computed. None: no clipping (local statistics).
    """

    mean: np.ndarray
    scale: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

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
        v = np.asarray(x, dtype=np.float64)
        if self.low is not None and self.high is not None:
            v = np.clip(v, self.low, self.high)
        out: np.ndarray = (v - self.mean) / self.scale
        return out.astype(np.float32)


def fit(x_train: np.ndarray, *, bounds: FeatureBounds | None = None) -> Standardizer:
    """Per-feature mean and standard deviation (population, ddof 0) of ``x_train``.

    Computed in float64 over axis 0, so image-shaped features get per-pixel statistics.

    Args:
        x_train: The training split.
        bounds: Clip to these bounds first (the statistics federated nodes pool); the
            returned standardiser clips too.

    Raises:
        DataError: ``x_train`` holds no sample.
    """
    if len(x_train) == 0:
        raise DataError("standardisation needs at least one training sample; got 0")
    x = np.asarray(x_train, dtype=np.float64)
    low = high = None
    if bounds is not None:
        shape = x.shape[1:]
        lo, hi = bounds.arrays(math.prod(shape))
        low, high = lo.reshape(shape), hi.reshape(shape)
        x = np.clip(x, low, high)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return Standardizer(mean=mean, scale=np.where(std > 0, std, 1.0), low=low, high=high)


def public_scaling(bounds: FeatureBounds, sample_shape: Sequence[int]) -> Standardizer:
    """Min-max scaling to [0, 1] by public bounds: ``(clip(x, low, high) - low) / (high - low)``.

    It depends on no row of the data, so it releases nothing: the preprocessing a node
    that requires DP may apply (a z-score fit on its rows is a release outside DP-SGD's
    guarantee, which assumes data-independent preprocessing).
    """
    shape = tuple(int(s) for s in sample_shape)
    low, high = bounds.arrays(math.prod(shape))
    span = high - low
    return Standardizer(
        mean=low.reshape(shape),
        scale=np.where(span > 0, span, 1.0).reshape(shape),
        low=low.reshape(shape),
        high=high.reshape(shape),
    )


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


def statistics_mode(mode: str, *, privacy_mode: str, bounded: bool | None = None) -> str:
    """Whose statistics standardise the features: ``"federated"`` or ``"local"``.

    Args:
        mode: ``data.statistics`` (``auto``, ``federated`` or ``local``).
        privacy_mode: ``privacy.mode``; ``auto`` is ``federated`` only when it is ``none``.
        bounded: ``data.feature_bounds`` are declared; ``auto`` is ``federated`` only then
            (without bounds one node's moments can move the pooled ones arbitrarily).
            None (not said): ``auto`` is ``local``, and ``federated`` is taken as checked
            (an :class:`~fedai.config.ExperimentConfig` refuses it without bounds).

    Raises:
        ConfigError: ``mode`` is unknown, or ``federated`` is asked for with DP on or
            without declared bounds.
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
    if mode == "federated" and bounded is False:
        raise ConfigError(
            "data.statistics 'federated' needs data.feature_bounds (public [low, high] "
            "bounds that limit what one node's moments can move); got none"
        )
    if mode == "auto":
        return "federated" if privacy_mode == "none" and bounded is True else "local"
    return mode


# ---------------------------------------------------------------------- federated moments
@dataclass(frozen=True, slots=True)
class Moments:
    """One training split's count and per-feature normalised mean and mean square.

    ``mean`` and ``mean_square`` are ``E[u]`` and ``E[u^2]`` of ``u = (clip(x) - low) /
    (high - low)`` (flattened features), so both lie in [0, 1].
    """

    count: int
    mean: np.ndarray
    mean_square: np.ndarray


def moments(x_train: np.ndarray, *, bounds: FeatureBounds) -> Moments:
    """The count and normalised mean and mean square of every feature of ``x_train``.

    Args:
        x_train: The training split (any sample shape; flattened per feature).
        bounds: The declared bounds: features are clipped to them and mapped to [0, 1].

    Raises:
        DataError: no sample, or a value that is not finite.
        ConfigError: ``bounds`` do not fit the feature count.
    """
    if len(x_train) == 0:
        raise DataError("feature statistics need at least one training sample; got 0")
    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    if not np.all(np.isfinite(x)):
        raise DataError("feature statistics need finite features; got NaN or inf")
    low, high = bounds.arrays(x.shape[1])
    u = (np.clip(x, low, high) - low) / (high - low)
    u = np.clip(u, 0.0, 1.0)  # float rounding of the division stays inside [0, 1]
    return Moments(count=len(x), mean=u.mean(axis=0), mean_square=np.square(u).mean(axis=0))


def check_moments(mean: np.ndarray, mean_square: np.ndarray, *, what: str) -> None:
    """Check normalised moments: ``0 <= m <= 1`` and ``m^2 <= s <= m`` per feature.

    ``m`` and ``s`` are ``E[u]`` and ``E[u^2]`` of a variable ``u`` in [0, 1]. The first
    says the mean lies within the declared bounds, the second that the variance ``s -
    m^2`` is >= 0 and at most ``(1 - m) m``: the Bhatia-Davis inequality ``Var(X) <= (h -
    mu)(mu - l)`` for ``X`` in ``[l, h]`` (Bhatia & Davis, "A better bound on the
    variance", Amer. Math. Monthly 107(4), 2000, pp. 353-357), which also bounds the
    variance by ``(h - l)^2 / 4`` (Popoviciu's inequality). Every pair that passes is
    the moments of some distribution on [0, 1] (a mixture of a point mass at ``m`` and a
    Bernoulli(``m``) on {0, 1} attains it), and the set of such pairs is convex, so honest
    contributions always pass and so does their weighted average. Slack:
    :data:`TOLERANCE`.

    Args:
        mean: ``E[u]`` per feature.
        mean_square: ``E[u^2]`` per feature.
        what: Names whose moments these are in the message.

    Raises:
        StatisticsBoundsError: the first check that fails, naming it and the first
            feature that fails it.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(mean_square, dtype=np.float64)
    # The variance s - m^2 loses ~1e-13 of s to float cancellation, and the limbs 1e-18.
    var_slack = 1e-12 * np.abs(s) + 8.0 * PRECISION
    checks = (
        ("mean >= low", -m - TOLERANCE),
        ("mean <= high", m - 1.0 - TOLERANCE),
        ("variance >= 0", np.square(m) - s - var_slack),
        ("variance <= (high - mean)(mean - low) (Bhatia-Davis)", s - m - TOLERANCE),
    )
    for check, excess in checks:
        if np.any(excess > 0):
            worst = int(np.argmax(excess))
            raise StatisticsBoundsError(
                f"{what} must satisfy {check} on every feature (data.feature_bounds); "
                f"feature {worst} exceeds it by {float(excess[worst]):.3g} of the range",
                check=check,
            )


def influence_bound(
    *, count: float, total_count: float, bounds: FeatureBounds, num_features: int
) -> np.ndarray:
    """How far one node can move each feature's pooled mean with valid moments.

    The pooled normalised mean is ``mu = sum_j n_j m_j / N``; node ``i`` replacing its
    ``m_i`` by any ``m_i'`` in [0, 1] moves it by ``(n_i / N) |m_i' - m_i| <= n_i / N``,
    in raw units ``(n_i / N)(h_f - l_f)`` (a weight share of the declared range). It holds
    for moments that pass :func:`check_moments` on their own: every node's in the clear;
    under HE only the sum is checked (see the module docstring).

    Args:
        count: The node's (announced) training count ``n_i``.
        total_count: The contributors' total ``N`` (including ``n_i``).
        bounds: The declared bounds.
        num_features: The number of (flattened) features.

    Returns:
        The largest shift of each feature's pooled mean, in the features' own units.

    Raises:
        ConfigError: ``count`` is not in ``[0, total_count]`` or ``total_count <= 0``.
    """
    if not (math.isfinite(total_count) and total_count > 0 and 0 <= count <= total_count):
        raise ConfigError(
            f"influence_bound needs 0 <= count <= total_count and total_count > 0; "
            f"got count {count!r}, total_count {total_count!r}"
        )
    low, high = bounds.arrays(num_features)
    out: np.ndarray = (float(count) / float(total_count)) * (high - low)
    return out


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
            f"normalised feature moments must lie within +-{BOUND:g} to share statistics "
            "(features clipped to data.feature_bounds); these exceed it"
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


def shapes_of(num_features: int, *, step: float) -> list[ArraySpec]:
    """The declared layout of a statistics payload: ``num_features`` features on grid ``step``.

    One float64 array (the limbs are float64; a float32 average would cost 7 digits), so a
    contribution or an aggregate relabelled to another dtype is refused by name.
    """
    return [ArraySpec((limbs_for(step), 2, int(num_features)), 8)]


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


@dataclass(frozen=True, slots=True)
class StatisticsCodec:
    """A node's codec for federated statistics: the scheme's codec and the declared bounds.

    Encodes and decodes limbs with ``inner`` (bound 1); :func:`decode_pooled` maps the
    decoded normalised moments back to the features' units with ``bounds`` and clips with
    them. The bounds travel with the codec so that every caller of :func:`decode_pooled`
    (the node's data path, the coordinator's per-node check) uses the same ones.

    Attributes:
        inner: The run's scheme codec for values of bound 1.
        bounds: The run's declared feature bounds (``data.feature_bounds``).
    """

    inner: ClientCodec
    bounds: FeatureBounds

    @property
    def name(self) -> str:
        """The scheme's name."""
        return self.inner.name

    def encode(self, weights: Sequence[np.ndarray], weight: float) -> Payload:
        """Encode ``weight * weights`` with the scheme's codec."""
        return self.inner.encode(weights, weight)

    def decode(self, payload: Payload, total_weight: float, shapes: Shapes) -> list[np.ndarray]:
        """Decode ``payload / total_weight`` with the scheme's codec (bounds-checked)."""
        return self.inner.decode(payload, total_weight, shapes)

    def encode_moments(self, m: Moments, *, step: float) -> Payload:
        """The payload a node shares: its :func:`share` limbs, weighted by ``m.count``."""
        return self.inner.encode([share(m, step=step)], float(m.count))


def decode_pooled(
    codec: StatisticsCodec,
    payload: Payload,
    *,
    total_count: float,
    own_count: int,
    sample_shape: Sequence[int],
    step: float,
    own: Moments | None = None,
) -> Standardizer:
    """Decode an encoded statistics aggregate with ``codec`` and validate it (:func:`pooled`).

    The total count is checked before the codec runs (no decryption for a weight no sum
    can have).

    Raises:
        CorruptPayloadError / KeyMismatchError: the count, the decoding or the values fail
            (:class:`StatisticsBoundsError` names a failed check of the moments).
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
        bounds=codec.bounds,
        own=own,
    )


def pooled(
    average: np.ndarray,
    *,
    total_count: float,
    own_count: int,
    sample_shape: Sequence[int],
    step: float,
    bounds: FeatureBounds,
    own: Moments | None = None,
) -> Standardizer:
    """Validate a decoded aggregate and turn it into the pooled :class:`Standardizer`.

    Args:
        average: The decoded weighted average of the nodes' :func:`share` limbs.
        total_count: ``N``, the aggregate's total weight (sum of contributors' counts).
        own_count: This node's training-set size.
        sample_shape: The shape of one sample (the statistics are per feature).
        step: The codec's grid used by :func:`share`.
        bounds: The declared feature bounds the moments are normalised to.
        own: This node's own moments, when it knows it is in the sum (it shared them):
            then the rest of the sum, ``(N mu - n_i m_i) / (N - n_i)`` and likewise for
            the mean square, must pass :func:`check_moments` too (the other contributors'
            data lie within the bounds as well). That bounds the pooled variance from
            below by ``n_i / N`` times this node's own spread about the pooled mean.

    Returns:
        Mean ``low + (high - low) mu`` and scale ``(high - low) sqrt(E[u^2] - mu^2)`` per
        feature (1 where the variance is indistinguishable from 0: only centred), with
        ``low``/``high`` to clip by.

    Raises:
        CorruptPayloadError: wrong length, non-finite values, a total count below the
            node's own or above :data:`MAX_TOTAL_COUNT`.
        StatisticsBoundsError: the pooled moments (or the rest) fail
            :func:`check_moments`. Messages name the thing, what was expected and what
            came (never data).
        ConfigError: ``bounds`` do not fit the feature count.
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
    low, high = bounds.arrays(d)
    mean, mean_square = from_limbs(a, step=step)
    check_moments(mean, mean_square, what="federated statistics")
    if own is not None and total_count - own.count >= 1:
        total, n = float(total_count), float(own.count)
        # What this node shared, as the limbs carried it (exact up to PRECISION).
        own_mean, own_square = from_limbs(share(own, step=step), step=step)
        try:
            check_moments(
                (total * mean - n * own_mean) / (total - n),
                (total * mean_square - n * own_square) / (total - n),
                what="federated statistics without this node's own",
            )
        except StatisticsBoundsError as err:
            raise StatisticsBoundsError(
                str(err), check=f"{err.check}, of the sum without this node's own"
            ) from err
    var = np.clip(mean_square - np.square(mean), 0.0, None)
    # Below the slack the variance cannot be told from 0 (a feature whose spread is
    # < ~1e-6 of its mean): only centred, never divided by ~0.
    var = np.where(var > 1e-12 * np.abs(mean_square) + 8.0 * PRECISION, var, 0.0)
    span = high - low
    std = span * np.sqrt(var)
    shape = tuple(int(s) for s in sample_shape)
    return Standardizer(
        mean=(low + span * np.clip(mean, 0.0, 1.0)).reshape(shape),
        scale=np.where(std > 0, std, 1.0).reshape(shape),
        low=low.reshape(shape),
        high=high.reshape(shape),
    )


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
    "NODE_FEATURE_BOUNDS",
    "PRECISION",
    "STATISTICS_MODES",
    "TOLERANCE",
    "FeatureBounds",
    "Moments",
    "Standardizer",
    "StatisticsBoundsError",
    "StatisticsCodec",
    "check_moments",
    "check_total_count",
    "decode_pooled",
    "digest",
    "fit",
    "from_limbs",
    "grid_step",
    "influence_bound",
    "limbs_for",
    "moments",
    "pooled",
    "public_scaling",
    "resolve",
    "shapes_of",
    "share",
    "statistics_mode",
    "to_limbs",
]
