"""Empirical privacy audit: membership-inference attacks on a trained model, with intervals.

Two attacks score members (training examples) against non-members (held-out examples of
the same distribution), higher meaning "member":

* loss threshold (Yeom, Giacomelli, Fredrikson & Jha 2018, "Privacy Risk in Machine
  Learning", CSF): score = minus the example's loss;
* offline LiRA (Carlini, Chien, Nasr, Song, Terzis & Tramèr 2022, "Membership Inference
  Attacks From First Principles", IEEE S&P): shadow models trained *without* the target
  examples give, per example, the distribution of the logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))``; the score is how far the target model's ``phi`` lies
  above that "out" distribution, ``(phi - mu_out) / sigma_out`` (fixed global variance by
  default, which the paper finds stronger with few shadow models).

Each attack reports ROC AUC and the true-positive rate at 1% and 0.1% false positives (the
low-FPR regime Carlini et al. 2022 argue for), each with a confidence interval over the
sampling of the audited examples (not over the randomness of training):

* AUC: DeLong's nonparametric variance (DeLong, DeLong & Clarke-Pearson 1988, "Comparing
  the Areas under Two or More Correlated Receiver Operating Characteristic Curves: A
  Nonparametric Approach", Biometrics 44(3):837-845) from placement values, computed in
  O(N log N) by sorting as in Sun & Xu 2014 ("Fast Implementation of DeLong's Algorithm",
  IEEE Signal Processing Letters 21(11)); the interval is ``AUC +- z * SE``, clipped to
  [0, 1];
* TPR at a fixed FPR: stratified percentile bootstrap (Efron & Tibshirani 1993, "An
  Introduction to the Bootstrap", Chapman & Hall, Ch. 13): members and non-members are
  resampled separately, so the uncertainty of the threshold, which the non-members set,
  is included.

With N non-members no FPR below 1/N is resolvable: the TPR at a smaller FPR is the TPR at
zero false positives (``fpr_resolution`` says so).

:func:`compare_attacks` states whether DP weakened an attack by more than the interval
(:data:`COMPARISON_RULE`): ``AUC_nonDP - AUC_DP > z * SE_diff``, where ``SE_diff`` is
DeLong's standard error of the difference of two AUCs measured on the *same* examples
(DeLong et al. 1988, Sec. 2: the covariance of the two placement-value vectors enters), so
the difference's interval lies above 0. It also states the stricter reading, that the two
AUC intervals do not overlap (``AUC_nonDP - AUC_DP > h_nonDP + h_DP``), which for
independent estimates amounts to about 99.4% rather than 95% confidence (Schenker &
Gentleman 2001, "On Judging the Significance of Differences by Examining the Overlap
Between Confidence Intervals", The American Statistician 55(3)). An audit gives an
empirical *lower* bound on leakage; it never certifies privacy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from fedai.errors import InvalidPrivacyParameterError

if TYPE_CHECKING:
    from torch import nn

    from fedai.models import ModelSpec

logger = logging.getLogger(__name__)

#: ``train_fn(x, y, seed) -> trained model``: the training procedure under audit.
TrainFn = Callable[[np.ndarray, np.ndarray, int], "nn.Module"]

#: ``on_step(step, total, description)``: told before each step of an audit (progress).
StepCallback = Callable[[int, int, str], None]

#: The false-positive rates every attack reports the TPR at.
FPR_TARGETS: tuple[float, float] = (0.01, 0.001)

#: How :func:`compare_attacks` decides, stated in every comparison.
COMPARISON_RULE = (
    "DP weakened an attack iff AUC_nonDP - AUC_DP > h_diff = z * SE_diff, the half-width of "
    "the interval of the difference (DeLong variance for two AUCs on the same examples), "
    "i.e. that interval lies above 0; 'intervals disjoint' is the stricter "
    "AUC_nonDP - AUC_DP > h_nonDP + h_DP. Intervals cover the sampling of the audited "
    "examples, not the randomness of training"
)

# Bootstrap work per chunk (resamples x examples), to bound memory.
_BOOTSTRAP_CHUNK = 2_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSettings:
    """How attack metrics are bracketed.

    Attributes:
        confidence: two-sided coverage of every interval, in (0, 1).
        bootstrap_resamples: stratified bootstrap resamples for the TPR intervals.
    """

    confidence: float = 0.95
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.confidence < 1.0:
            problems.append(f"confidence must be in (0, 1); got {self.confidence!r}")
        if (
            isinstance(self.bootstrap_resamples, bool)
            or not isinstance(self.bootstrap_resamples, int)
            or self.bootstrap_resamples < 2
        ):
            problems.append(
                f"bootstrap_resamples must be an integer >= 2; got {self.bootstrap_resamples!r}"
            )
        if problems:
            raise InvalidPrivacyParameterError("; ".join(problems))

    @property
    def z(self) -> float:
        """Standard-normal quantile ``z`` with ``P(|Z| <= z) = confidence``."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


DEFAULT_INTERVALS = IntervalSettings()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AttackScores:
    """The raw scores behind an :class:`AttackResult` (kept for paired comparisons).

    Attributes:
        members: one score per member, higher meaning "member".
        nonmembers: one score per non-member.
    """

    members: np.ndarray
    nonmembers: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """How well one attack separates members from non-members, with intervals.

    Attributes:
        attack: ``"loss"`` or ``"lira"``.
        auc: ROC AUC (0.5 = chance).
        auc_se: DeLong standard error of ``auc``.
        auc_ci: ``auc +- z * auc_se`` clipped to [0, 1].
        tpr_at_1pct_fpr: true-positive rate at 1% false-positive rate.
        tpr_at_1pct_fpr_ci: its stratified percentile-bootstrap interval.
        tpr_at_01pct_fpr: true-positive rate at 0.1% false-positive rate (the TPR at zero
            false positives when there are fewer than 1000 non-members).
        tpr_at_01pct_fpr_ci: its stratified percentile-bootstrap interval.
        confidence: coverage of the intervals.
        bootstrap_resamples: resamples behind the TPR intervals.
        num_members: member examples scored.
        num_nonmembers: non-member examples scored.
        scores: the scores themselves (not serialised; needed by :func:`compare_attacks`).
    """

    attack: str
    auc: float
    auc_se: float
    auc_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci: tuple[float, float]
    tpr_at_01pct_fpr: float
    tpr_at_01pct_fpr_ci: tuple[float, float]
    confidence: float
    bootstrap_resamples: int
    num_members: int
    num_nonmembers: int
    scores: AttackScores | None = field(default=None, repr=False, compare=False)

    @property
    def auc_half_width(self) -> float:
        """``z * auc_se``: the unclipped half-width of the AUC interval."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2) * self.auc_se

    @property
    def fpr_resolution(self) -> float:
        """``1 / num_nonmembers``: the smallest non-zero FPR these scores can show."""
        return 1.0 / self.num_nonmembers

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (without the raw scores)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scores"}
        out["auc_half_width"] = self.auc_half_width
        out["fpr_resolution"] = self.fpr_resolution
        return out


def _as_scores(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, *, minimum: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(member_scores, dtype=np.float64).ravel()
    n = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if m.size < minimum or n.size < minimum:
        raise InvalidPrivacyParameterError(
            f"attack needs at least {minimum} members and {minimum} non-members; got "
            f"{m.size} and {n.size}"
        )
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise InvalidPrivacyParameterError("attack scores must be finite")
    return m, n


def _placements(m: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values ``(V10 per member, V01 per non-member)`` by binary search."""
    n_sorted, m_sorted = np.sort(n), np.sort(m)
    below = np.searchsorted(n_sorted, m, side="left")  # non-members < X_i
    at_or_below = np.searchsorted(n_sorted, m, side="right")  # non-members <= X_i
    above = m.size - np.searchsorted(m_sorted, n, side="right")  # members > Y_j
    at_or_above = m.size - np.searchsorted(m_sorted, n, side="left")  # members >= Y_j
    return (below + at_or_below) / (2.0 * n.size), (above + at_or_above) / (2.0 * m.size)


def delong_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[float, float]:
    """Return the ROC AUC and its DeLong variance (DeLong et al. 1988).

    With members ``X_i`` (m of them), non-members ``Y_j`` (n) and the kernel
    ``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``, the placement values are
    ``V10_i = mean_j psi(X_i, Y_j)`` and ``V01_j = mean_i psi(X_i, Y_j)``; the AUC is their
    mean and its variance is ``s10 / m + s01 / n`` with ``s10``, ``s01`` the sample
    variances (``ddof=1``) of ``V10`` and ``V01``. Counting by binary search on the sorted
    scores gives the ``O(N log N)`` cost of Sun & Xu 2014.

    Args:
        member_scores: scores of members, higher meaning "member".
        nonmember_scores: scores of non-members.

    Returns:
        ``(auc, variance)``.

    Raises:
        InvalidPrivacyParameterError: fewer than 2 scores on a side, or non-finite scores.
    """
    m, n = _as_scores(member_scores, nonmember_scores, minimum=2)
    v10, v01 = _placements(m, n)
    auc = float(v10.mean())
    variance = float(v10.var(ddof=1) / m.size + v01.var(ddof=1) / n.size)
    return auc, variance


def delong_difference(first: AttackScores, second: AttackScores) -> tuple[float, float]:
    """Return ``AUC_first - AUC_second`` and its DeLong variance, for the same examples.

    Both score sets must score the same members and non-members in the same order (two
    models, one audit split). With the placement values of each (see :func:`delong_auc`),
    the variance is ``var(V10_1 - V10_2) / m + var(V01_1 - V01_2) / n``, which is
    DeLong et al. 1988's ``S_11 + S_22 - 2 S_12`` (Sec. 2, the contrast ``L = (1, -1)``).

    Raises:
        InvalidPrivacyParameterError: different sizes, fewer than 2 scores on a side, or
            non-finite scores.
    """
    m1, n1 = _as_scores(first.members, first.nonmembers, minimum=2)
    m2, n2 = _as_scores(second.members, second.nonmembers, minimum=2)
    if m1.size != m2.size or n1.size != n2.size:
        raise InvalidPrivacyParameterError(
            "paired AUC difference needs the same members and non-members; got "
            f"{m1.size}/{n1.size} and {m2.size}/{n2.size} scores"
        )
    v10_1, v01_1 = _placements(m1, n1)
    v10_2, v01_2 = _placements(m2, n2)
    d10, d01 = v10_1 - v10_2, v01_1 - v01_2
    variance = float(d10.var(ddof=1) / m1.size + d01.var(ddof=1) / n1.size)
    return float(d10.mean()), variance


def _allowed_false_positives(fpr: float, num_nonmembers: int) -> int:
    # floor(fpr * n), robust to 0.01 * 300 = 3.0000000000000004 and 0.29 * 100 = 28.99...
    return math.floor(fpr * num_nonmembers + 1e-9)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Return the highest TPR of a rule "member iff score >= t" whose FPR is at most ``fpr``.

    At most ``k = floor(fpr * n)`` of the ``n`` non-members may score at or above ``t``, so
    the best ``t`` lies just above the ``(k+1)``-th highest non-member score ``s`` and the
    TPR is the fraction of members scoring strictly above ``s`` (1 when ``k >= n``). This
    equals the largest TPR on the ROC curve at FPR <= ``fpr``.

    Raises:
        InvalidPrivacyParameterError: an empty side, non-finite scores, or ``fpr`` outside
            [0, 1].
    """
    m, n = _as_scores(member_scores, nonmember_scores)
    if not 0.0 <= fpr <= 1.0:
        raise InvalidPrivacyParameterError(f"fpr must be in [0, 1]; got {fpr!r}")
    k = _allowed_false_positives(fpr, n.size)
    if k >= n.size:
        return 1.0
    threshold = np.partition(n, n.size - 1 - k)[n.size - 1 - k]
    return float(np.mean(m > threshold))


def bootstrap_tpr_intervals(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    fprs: Sequence[float],
    rng: np.random.Generator,
    intervals: IntervalSettings = DEFAULT_INTERVALS,
) -> list[tuple[float, float]]:
    """Return a stratified percentile-bootstrap interval of :func:`tpr_at_fpr` per FPR.

    Each resample draws ``m`` members and ``n`` non-members with replacement, each side on
    its own (Efron & Tibshirani 1993, Ch. 8 two-sample bootstrap), and recomputes the
    threshold and the TPR; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled TPRs (percentile method, Ch. 13).
    All FPRs share the resamples.

    Raises:
        InvalidPrivacyParameterError: an empty side, non-finite scores, or an FPR outside
            [0, 1].
    """
    m, n = _as_scores(member_scores, nonmember_scores)
    bad = [f for f in fprs if not 0.0 <= f <= 1.0]
    if bad:
        raise InvalidPrivacyParameterError(f"fprs must be in [0, 1]; got {bad!r}")
    resamples = intervals.bootstrap_resamples
    ks = [_allowed_false_positives(f, n.size) for f in fprs]
    stats = np.empty((len(ks), resamples))
    chunk = max(1, _BOOTSTRAP_CHUNK // max(m.size, n.size))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        mb = m[rng.integers(0, m.size, size=(rows, m.size))]
        nb = np.sort(n[rng.integers(0, n.size, size=(rows, n.size))], axis=1)
        for i, k in enumerate(ks):
            if k >= n.size:
                stats[i, start : start + rows] = 1.0
            else:
                threshold = nb[:, n.size - 1 - k]
                stats[i, start : start + rows] = (mb > threshold[:, None]).mean(axis=1)
    tail = (1.0 - intervals.confidence) / 2
    return [(float(np.quantile(s, tail)), float(np.quantile(s, 1.0 - tail))) for s in stats]


def attack_metrics(
    attack: str,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    rng: np.random.Generator,
    intervals: IntervalSettings = DEFAULT_INTERVALS,
) -> AttackResult:
    """Return AUC and TPR at 1% and 0.1% FPR, with intervals, for "higher = member" scores.

    Args:
        attack: the attack's name, carried into the result.
        member_scores: scores of members.
        nonmember_scores: scores of non-members.
        rng: drives the bootstrap (seed it to make the intervals reproducible).
        intervals: confidence and bootstrap resamples.

    Returns:
        An :class:`AttackResult`.

    Raises:
        InvalidPrivacyParameterError: fewer than 2 scores on a side, or non-finite scores.
    """
    m, n = _as_scores(member_scores, nonmember_scores, minimum=2)
    auc, variance = delong_auc(m, n)
    se = math.sqrt(max(variance, 0.0))
    half = intervals.z * se
    tpr_cis = bootstrap_tpr_intervals(m, n, fprs=FPR_TARGETS, rng=rng, intervals=intervals)
    return AttackResult(
        attack=attack,
        auc=auc,
        auc_se=se,
        auc_ci=(max(0.0, auc - half), min(1.0, auc + half)),
        tpr_at_1pct_fpr=tpr_at_fpr(m, n, FPR_TARGETS[0]),
        tpr_at_1pct_fpr_ci=tpr_cis[0],
        tpr_at_01pct_fpr=tpr_at_fpr(m, n, FPR_TARGETS[1]),
        tpr_at_01pct_fpr_ci=tpr_cis[1],
        confidence=intervals.confidence,
        bootstrap_resamples=intervals.bootstrap_resamples,
        num_members=int(m.size),
        num_nonmembers=int(n.size),
        scores=AttackScores(members=m, nonmembers=n),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackComparison:
    """One attack on the non-private and the DP model, decided by :data:`COMPARISON_RULE`.

    Attributes:
        attack: the attack's name.
        auc_non_private: AUC against the model trained without privacy.
        auc_dp: AUC against the DP model.
        difference_se: DeLong standard error of ``auc_non_private - auc_dp`` (paired).
        half_width_non_private: ``z * SE`` of ``auc_non_private``.
        half_width_dp: ``z * SE`` of ``auc_dp``.
        confidence: coverage of every interval.
    """

    attack: str
    auc_non_private: float
    auc_dp: float
    difference_se: float
    half_width_non_private: float
    half_width_dp: float
    confidence: float

    @property
    def difference(self) -> float:
        """``AUC_nonDP - AUC_DP``: what DP bought against this attack."""
        return self.auc_non_private - self.auc_dp

    @property
    def half_width_difference(self) -> float:
        """``z * difference_se``: the difference must exceed this."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2) * self.difference_se

    @property
    def difference_ci(self) -> tuple[float, float]:
        """``difference +- half_width_difference``."""
        return (
            self.difference - self.half_width_difference,
            self.difference + self.half_width_difference,
        )

    @property
    def dp_weaker(self) -> bool:
        """True iff ``difference > half_width_difference`` (its interval lies above 0)."""
        return self.difference > self.half_width_difference

    @property
    def intervals_disjoint(self) -> bool:
        """True iff ``difference > half_width_non_private + half_width_dp`` (stricter)."""
        return self.difference > self.half_width_non_private + self.half_width_dp

    def statement(self) -> str:
        """Return the decision as one line, with the numbers it rests on."""
        pct = f"{100 * self.confidence:g}%"
        low, high = self.difference_ci
        verdict = (
            f"DP weakened the attack beyond the {pct} interval"
            if self.dp_weaker
            else f"DP not shown to weaken the attack at {pct}"
        )
        margin = self.half_width_non_private + self.half_width_dp
        return (
            f"{self.attack}: AUC_nonDP - AUC_DP = {self.auc_non_private:.3f} - "
            f"{self.auc_dp:.3f} = {self.difference:.3f} "
            f"{'>' if self.dp_weaker else '<='} h_diff {self.half_width_difference:.3f} "
            f"({pct} interval [{low:.3f}, {high:.3f}]): {verdict}; AUC intervals "
            f"{'disjoint' if self.intervals_disjoint else 'overlap'} "
            f"({self.difference:.3f} {'>' if self.intervals_disjoint else '<='} "
            f"h_nonDP + h_DP = {self.half_width_non_private:.3f} + "
            f"{self.half_width_dp:.3f} = {margin:.3f})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict, including the decision and the rule."""
        out = asdict(self)
        out.update(
            difference=self.difference,
            half_width_difference=self.half_width_difference,
            difference_ci=self.difference_ci,
            dp_weaker=self.dp_weaker,
            intervals_disjoint=self.intervals_disjoint,
            rule=COMPARISON_RULE,
            statement=self.statement(),
        )
        return out


def compare_attacks(non_private: AttackResult, dp: AttackResult) -> AttackComparison:
    """Compare one attack on a non-private and a DP model by :data:`COMPARISON_RULE`.

    Both results must come from the same audit split (same members and non-members, same
    order), as :func:`audit_training` gives for the same seed.

    Raises:
        InvalidPrivacyParameterError: different attacks or confidences, or results
            without their scores.
    """
    if non_private.attack != dp.attack or non_private.confidence != dp.confidence:
        raise InvalidPrivacyParameterError(
            "compare needs the same attack at the same confidence; got "
            f"{non_private.attack!r} at {non_private.confidence} and {dp.attack!r} at "
            f"{dp.confidence}"
        )
    if non_private.scores is None or dp.scores is None:
        raise InvalidPrivacyParameterError(
            "compare needs the attack scores; got a result without them (from_dict?)"
        )
    _, variance = delong_difference(non_private.scores, dp.scores)
    return AttackComparison(
        attack=dp.attack,
        auc_non_private=non_private.auc,
        auc_dp=dp.auc,
        difference_se=math.sqrt(max(variance, 0.0)),
        half_width_non_private=non_private.auc_half_width,
        half_width_dp=dp.auc_half_width,
        confidence=dp.confidence,
    )


def _logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[i : i + batch_size], dtype=torch.float32)
            out.append(model(xb).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return each example's cross-entropy loss under ``model``."""
    logits = _logits(model, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.asarray(-log_probs[np.arange(len(y)), np.asarray(y, dtype=np.int64)])


def logit_confidence(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return ``phi = log p_y - log(1 - p_y)`` per example (Carlini et al. 2022, Sec. IV).

    Computed stably as ``z_y - logsumexp(z_{j != y})`` from the logits ``z``.
    """
    logits = _logits(model, x)
    idx = np.arange(len(y))
    yy = np.asarray(y, dtype=np.int64)
    true = logits[idx, yy]
    others = logits.copy()
    others[idx, yy] = -np.inf
    top = others.max(axis=1)
    lse = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    return np.asarray(true - lse)


def loss_threshold_attack(
    model: nn.Module,
    *,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    intervals: IntervalSettings = DEFAULT_INTERVALS,
) -> AttackResult:
    """Loss-threshold membership inference (Yeom et al. 2018): low loss means member.

    Args:
        model: the target model.
        members: ``(x, y)`` of the target's training examples.
        nonmembers: ``(x, y)`` of held-out examples.
        rng: drives the bootstrap of the TPR intervals.
        intervals: confidence and bootstrap resamples.
    """
    return attack_metrics(
        "loss",
        -per_example_loss(model, *members),
        -per_example_loss(model, *nonmembers),
        rng=rng,
        intervals=intervals,
    )


def lira_offline_attack(
    model: nn.Module,
    shadow_models: list[nn.Module],
    *,
    members: tuple[np.ndarray, np.ndarray],
    nonmembers: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    fixed_variance: bool = True,
    intervals: IntervalSettings = DEFAULT_INTERVALS,
) -> AttackResult:
    """Offline LiRA (Carlini et al. 2022, Alg. 1 with only OUT models).

    Args:
        model: the target model.
        shadow_models: models trained like the target on data that contains none of the
            member or non-member examples (at least 2).
        members: ``(x, y)`` of the target's training examples.
        nonmembers: ``(x, y)`` of held-out examples.
        rng: drives the bootstrap of the TPR intervals.
        fixed_variance: use one global std over all examples (better with few shadows).
        intervals: confidence and bootstrap resamples.

    Raises:
        InvalidPrivacyParameterError: fewer than 2 shadow models.
    """
    if len(shadow_models) < 2:
        raise InvalidPrivacyParameterError(
            f"LiRA needs at least 2 shadow models; got {len(shadow_models)}"
        )
    x = np.concatenate([members[0], nonmembers[0]])
    y = np.concatenate([members[1], nonmembers[1]])
    target_phi = logit_confidence(model, x, y)
    shadow_phi = np.stack([logit_confidence(s, x, y) for s in shadow_models])  # (k, N)
    mu = shadow_phi.mean(axis=0)
    if fixed_variance:
        std = np.full_like(mu, float(shadow_phi.std(axis=0, ddof=1).mean()))
    else:
        std = shadow_phi.std(axis=0, ddof=1)
    score = (target_phi - mu) / np.maximum(std, 1e-8)
    k = len(members[1])
    return attack_metrics("lira", score[:k], score[k:], rng=rng, intervals=intervals)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Both attacks on one training procedure, plus the target model's utility.

    ``member_ids`` and ``nonmember_ids`` (positions in the audited pool; not serialised)
    let :func:`compare_reports` check that two reports scored the same examples.
    """

    loss: AttackResult | None
    lira: AttackResult | None
    train_accuracy: float
    test_accuracy: float
    num_shadow_models: int
    member_ids: np.ndarray | None = field(default=None, repr=False, compare=False)
    nonmember_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    def attacks(self) -> dict[str, AttackResult]:
        """Return the attacks that ran, by name."""
        return {r.attack: r for r in (self.loss, self.lira) if r is not None}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "loss": None if self.loss is None else self.loss.to_dict(),
            "lira": None if self.lira is None else self.lira.to_dict(),
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "num_shadow_models": self.num_shadow_models,
        }


def compare_reports(non_private: AuditReport, dp: AuditReport) -> dict[str, AttackComparison]:
    """Compare every attack both reports ran (:func:`compare_attacks`), by attack name.

    Raises:
        InvalidPrivacyParameterError: the reports scored different examples.
    """
    same = all(
        a is not None and b is not None and np.array_equal(a, b)
        for a, b in (
            (non_private.member_ids, dp.member_ids),
            (non_private.nonmember_ids, dp.nonmember_ids),
        )
    )
    if not same:
        raise InvalidPrivacyParameterError(
            "compare needs two audits of the same split (same seed and pool); got reports "
            "of different or unknown members and non-members"
        )
    dp_attacks = dp.attacks()
    return {
        name: compare_attacks(result, dp_attacks[name])
        for name, result in non_private.attacks().items()
        if name in dp_attacks
    }


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((_logits(model, x).argmax(axis=1) == y).mean()) if len(y) else math.nan


def audit_training(
    *,
    x: np.ndarray,
    y: np.ndarray,
    train_fn: TrainFn,
    num_members: int,
    num_shadow_models: int,
    rng: np.random.Generator,
    attacks: tuple[str, ...] = ("loss", "lira"),
    intervals: IntervalSettings = DEFAULT_INTERVALS,
    num_nonmembers: int | None = None,
    on_step: StepCallback | None = None,
) -> AuditReport:
    """Audit a training procedure end to end with the loss and offline-LiRA attacks.

    Shuffles the pool, takes ``num_members`` members (the target's training set), then
    ``num_nonmembers`` non-members, and trains ``num_shadow_models`` shadow models with
    ``train_fn`` on random ``num_members``-sized subsets of the remaining examples
    (disjoint from every target example, as offline LiRA requires).

    Args:
        x: the pooled features.
        y: the pooled labels.
        train_fn: the training procedure under audit.
        num_members: members drawn from the pool (the target's training set).
        num_shadow_models: LiRA shadow models.
        rng: drives the split, the ``seed`` handed to ``train_fn``, the shadow subsets and
            the bootstrap: the same seed gives the same split and resamples, so audits of
            two procedures are paired example by example.
        attacks: which attacks to run.
        intervals: confidence and bootstrap resamples.
        num_nonmembers: held-out examples scored (default: ``num_members``). More
            non-members narrow the intervals and resolve lower FPRs (``1/num_nonmembers``)
            without changing what is trained; the AUC's expectation does not depend on it.
        on_step: told before training each model and before the attacks (progress only:
            ``1 + shadow models + 1`` steps with LiRA, 2 without).

    Raises:
        InvalidPrivacyParameterError: too few examples for the requested split.
    """
    n = len(y)
    num_non = num_members if num_nonmembers is None else num_nonmembers
    if num_members < 2 or num_non < 2 or num_shadow_models < 2:
        raise InvalidPrivacyParameterError(
            f"audit needs num_members >= 2, num_nonmembers >= 2 and num_shadow_models >= 2; "
            f"got {num_members}, {num_non} and {num_shadow_models}"
        )
    needed = 2 * num_members + num_non
    if n < needed:
        raise InvalidPrivacyParameterError(
            f"audit needs at least 2 * num_members + num_nonmembers = {needed} examples "
            f"(members, non-members, shadow pool); got {n}"
        )
    order = rng.permutation(n)
    mem, non, pool = (
        order[:num_members],
        order[num_members : num_members + num_non],
        order[num_members + num_non :],
    )
    seeds = rng.integers(0, 2**31 - 1, size=num_shadow_models + 1)
    num_shadows = num_shadow_models if "lira" in attacks else 0
    total = num_shadows + 2

    def step(done: int, description: str) -> None:
        if on_step is not None:
            on_step(done, total, description)

    step(1, f"training the target model on {num_members} members")
    target = train_fn(x[mem], y[mem], int(seeds[0]))
    shadows = []
    for i in range(num_shadows):
        step(i + 2, f"training shadow model {i + 1} of {num_shadows}")
        pick = rng.choice(pool, size=num_members, replace=False)
        shadows.append(train_fn(x[pick], y[pick], int(seeds[i + 1])))
    step(total, f"attacking ({', '.join(attacks)}) and bootstrapping the intervals")
    members, nonmembers = (x[mem], y[mem]), (x[non], y[non])
    report = AuditReport(
        loss=loss_threshold_attack(
            target, members=members, nonmembers=nonmembers, rng=rng, intervals=intervals
        )
        if "loss" in attacks
        else None,
        lira=lira_offline_attack(
            target, shadows, members=members, nonmembers=nonmembers, rng=rng, intervals=intervals
        )
        if "lira" in attacks
        else None,
        train_accuracy=_accuracy(target, *members),
        test_accuracy=_accuracy(target, *nonmembers),
        num_shadow_models=num_shadow_models,
        member_ids=mem,
        nonmember_ids=non,
    )
    logger.info(
        "audit: loss %s, LiRA %s, train acc %.3f, test acc %.3f",
        report.loss,
        report.lira,
        report.train_accuracy,
        report.test_accuracy,
    )
    return report


def make_train_fn(
    *,
    spec: ModelSpec,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    grad_sample_mode: str = "hooks",
) -> TrainFn:
    """Return a central (non-federated) training procedure for audits.

    ``noise_multiplier=None`` trains without privacy (shuffled mini-batches); otherwise
    DP-SGD through :func:`fedai.privacy.dpsgd.train_dp_sgd` with Poisson sampling. The
    ``seed`` given to the returned function fixes the initial weights and the non-private
    shuffling; DP-SGD's Poisson batches and Gaussian noise never come from it: they come
    from OS entropy, as in a real client, so a DP audit is not bit-reproducible.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedai.models import build_model
    from fedai.privacy.dpsgd import train_dp_sgd

    def train(xs: np.ndarray, ys: np.ndarray, seed: int) -> nn.Module:
        model = build_model(spec, seed=seed)
        data = TensorDataset(
            torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.int64)
        )

        def factory(params: Any) -> torch.optim.Optimizer:
            return torch.optim.SGD(params, lr=lr, momentum=momentum)

        if noise_multiplier is None:
            gen = torch.Generator().manual_seed(seed)
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
            opt = factory(model.parameters())
            loss_fn = torch.nn.CrossEntropyLoss()
            model.train()
            for _ in range(epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    loss_fn(model(xb), yb).backward()
                    opt.step()
            return model
        result = train_dp_sgd(  # noise_generator=None: OS entropy
            model,
            loader=DataLoader(data, batch_size=batch_size),
            optimizer_factory=factory,
            epochs=epochs,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode,
        )
        model.load_state_dict(result.state_dict)
        return model

    return train


def compare_dp_audit(
    *,
    x: np.ndarray,
    y: np.ndarray,
    spec: ModelSpec,
    num_members: int,
    num_shadow_models: int,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    seed: int = 0,
    grad_sample_mode: str = "hooks",
    intervals: IntervalSettings = DEFAULT_INTERVALS,
    num_nonmembers: int | None = None,
) -> dict[str, Any]:
    """Audit the same configuration without and with DP-SGD; return both and the verdicts.

    The same ``seed`` gives both audits the same split, shadow subsets and bootstrap
    resamples, so the AUC difference is the effect of DP (plus training randomness; DP
    noise comes from OS entropy). The DP side also reports its RDP epsilon; ``"compare"``
    holds :meth:`AttackComparison.to_dict` per attack.
    """
    from fedai.privacy.accounting import epsilon_from_history
    from fedai.privacy.dpsgd import planned_event

    reports: dict[str, AuditReport] = {}
    for name, sigma in (("non_private", None), ("dp", noise_multiplier)):
        fn = make_train_fn(
            spec=spec,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode,
        )
        reports[name] = audit_training(
            x=x,
            y=y,
            train_fn=fn,
            num_members=num_members,
            num_shadow_models=num_shadow_models,
            rng=np.random.default_rng(seed),
            intervals=intervals,
            num_nonmembers=num_nonmembers,
        )
    event = planned_event(
        noise_multiplier=noise_multiplier,
        num_samples=num_members,
        batch_size=batch_size,
        epochs=epochs,
    )
    out: dict[str, Any] = {name: report.to_dict() for name, report in reports.items()}
    out["dp"]["epsilon"] = epsilon_from_history([event], delta=delta, accountant="rdp")
    out["dp"]["delta"] = delta
    out["dp"]["noise_multiplier"] = noise_multiplier
    out["compare"] = {
        name: c.to_dict()
        for name, c in compare_reports(reports["non_private"], reports["dp"]).items()
    }
    return out


__all__ = [
    "COMPARISON_RULE",
    "DEFAULT_INTERVALS",
    "FPR_TARGETS",
    "AttackComparison",
    "AttackResult",
    "AttackScores",
    "AuditReport",
    "IntervalSettings",
    "StepCallback",
    "TrainFn",
    "attack_metrics",
    "audit_training",
    "bootstrap_tpr_intervals",
    "compare_attacks",
    "compare_dp_audit",
    "compare_reports",
    "delong_auc",
    "delong_difference",
    "lira_offline_attack",
    "logit_confidence",
    "loss_threshold_attack",
    "make_train_fn",
    "per_example_loss",
    "tpr_at_fpr",
]
