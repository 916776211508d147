"""Privacy accounting math: epsilon of a (sigma, q, steps) history, and sigma calibration.

Pure functions, no state. A *history* is a sequence of
:class:`DpSgdEvent` ``(noise_multiplier, sample_rate, steps)``: ``steps`` applications of
the Poisson-subsampled Gaussian mechanism with sampling rate ``sample_rate`` and noise
``noise_multiplier`` (Abadi et al. 2016, "Deep Learning with Differential Privacy",
CCS). Two independent implementations compute epsilon from it:

* Opacus (the primary report): :class:`opacus.accountants.RDPAccountant` (Rényi DP of the
  sampled Gaussian mechanism, Mironov 2017 "Rényi Differential Privacy", CSF; Mironov,
  Talwar & Zhang 2019) and :class:`opacus.accountants.PRVAccountant` (privacy random
  variables, Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy",
  NeurIPS).
* Google ``dp-accounting`` (the cross-check): ``RdpAccountant`` and ``PLDAccountant``
  composing ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` events.

Both use the add-or-remove-one neighbouring relation.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple

from fedai.errors import InvalidPrivacyParameterError, PrivacyBudgetExceededError

logger = logging.getLogger(__name__)

AccountantName = Literal["rdp", "prv"]
IndependentAccountantName = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: Default delta when a config leaves ``privacy.delta`` unset.
DEFAULT_DELTA = 1e-5


class DpSgdEvent(NamedTuple):
    """``steps`` Poisson-subsampled Gaussian steps at one ``(noise_multiplier, sample_rate)``.

    The same triple Opacus keeps in ``accountant.history``.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int


# ---------------------------------------------------------------------- validation
def check_delta(delta: float, *, name: str = "delta") -> float:
    """Return ``delta`` as float if ``0 < delta < 1``.

    Raises:
        InvalidPrivacyParameterError: otherwise (NaN included).
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise InvalidPrivacyParameterError(f"{name} must be in (0, 1); got {delta!r}")
    return float(delta)


def check_positive(value: float, *, name: str) -> float:
    """Return ``value`` as float if it is a finite number ``> 0``.

    Raises:
        InvalidPrivacyParameterError: otherwise.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidPrivacyParameterError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_event(event: DpSgdEvent | Sequence[float], *, where: str = "event") -> DpSgdEvent:
    """Return ``event`` as a validated :class:`DpSgdEvent`.

    Raises:
        InvalidPrivacyParameterError: if sigma <= 0, q not in (0, 1], or steps < 0.
    """
    try:
        sigma, q, steps = event
    except (TypeError, ValueError) as err:
        raise InvalidPrivacyParameterError(
            f"{where} must be (noise_multiplier, sample_rate, steps); got {event!r}"
        ) from err
    sigma_f = check_positive(sigma, name=f"{where}.noise_multiplier")
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
        raise InvalidPrivacyParameterError(f"{where}.sample_rate must be in (0, 1]; got {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidPrivacyParameterError(f"{where}.steps must be an integer >= 0; got {steps!r}")
    return DpSgdEvent(sigma_f, float(q), int(steps))


def resolve_delta(delta: float | None, *, num_samples: int | None = None) -> float:
    """Return the delta to account at.

    ``None`` resolves to ``min(1e-5, 1 / (10 n))`` when the data set size ``n`` is known
    (delta must be well below ``1/n``, otherwise "leak one record in full" is allowed),
    else to ``1e-5``. A given value is validated, never changed.

    Raises:
        InvalidPrivacyParameterError: ``delta`` outside (0, 1) or ``num_samples < 1``.
    """
    if delta is not None:
        return check_delta(delta)
    if num_samples is None:
        return DEFAULT_DELTA
    if num_samples < 1:
        raise InvalidPrivacyParameterError(f"num_samples must be >= 1; got {num_samples!r}")
    return min(DEFAULT_DELTA, 1.0 / (10.0 * num_samples))


def resolve_user_delta(delta: float | None, *, population: int) -> float:
    """Return the delta user-level DP is stated at: the one rule plan and coordinator share.

    User-level DP protects one client among ``population``, so an unset delta resolves
    like :func:`resolve_delta` with the population as the data set size:
    ``min(1e-5, 1 / (10 * population))``. ``fedai privacy plan``, the privacy statement
    and the coordinator's ``results.json`` all call this, so they agree at every
    population (they did not above 10,000 clients).

    Raises:
        InvalidPrivacyParameterError: ``delta`` outside (0, 1) or ``population < 1``.
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise InvalidPrivacyParameterError(
            f"population must be an integer >= 1; got {population!r}"
        )
    return resolve_delta(delta, num_samples=population)


def poisson_schedule(*, num_samples: int, batch_size: int) -> tuple[float, int]:
    """Return ``(sample_rate, steps_per_epoch)`` exactly as Opacus' ``DPDataLoader`` uses them.

    Opacus samples at ``1 / ceil(n / B)``, runs ``int(1 / q)`` steps per epoch (one less
    than ``ceil(n / B)`` for some sizes, e.g. 93, from float rounding) and its accountant
    records ``q = 1 / steps``. We mirror that so plans match what a real run records.

    Raises:
        InvalidPrivacyParameterError: ``num_samples`` or ``batch_size`` below 1.
    """
    if num_samples < 1 or batch_size < 1:
        raise InvalidPrivacyParameterError(
            f"num_samples and batch_size must be >= 1; got {num_samples!r}, {batch_size!r}"
        )
    batches = math.ceil(num_samples / batch_size)
    steps = int(1.0 / (1.0 / batches))
    # PrivacyEngine accounts at 1 / len(DPDataLoader) = 1 / steps (>= the true rate).
    return 1.0 / steps, steps


# ---------------------------------------------------------------------- Opacus (primary)
def _opacus_accountant(name: str) -> object:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise InvalidPrivacyParameterError(f"accountant must be one of rdp, prv; got {name!r}")


def epsilon_from_history(
    history: Iterable[DpSgdEvent | Sequence[float]],
    *,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Return epsilon at ``delta`` of the composition of every event in ``history`` (Opacus).

    RDP converts with the improved conversion of Balle et al. 2020 as Opacus does
    (Mironov 2017 for the RDP of the sampled Gaussian); PRV composes numerically (Gopi et
    al. 2021) with Opacus' default error bounds (``eps_error=0.01``). An empty history (or
    one with only zero-step events) spends nothing and returns 0.0.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` events.
        delta: target delta in (0, 1).
        accountant: ``"rdp"`` or ``"prv"``.

    Returns:
        Epsilon (float; ``inf`` if the accountant cannot bound it).

    Raises:
        InvalidPrivacyParameterError: a bad delta, accountant name or event.
    """
    delta = check_delta(delta)
    events = [check_event(e, where=f"history[{i}]") for i, e in enumerate(history)]
    acc = _opacus_accountant(accountant)
    # Composition is commutative and identical mechanisms compose by adding steps (RDP is
    # additive in steps; PRV self-composes), so merge equal (sigma, q) events: a client's
    # ledger has one entry per round and would otherwise cost one RDP evaluation each.
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        if e.steps > 0:
            key = (e.noise_multiplier, e.sample_rate)
            merged[key] = merged.get(key, 0) + e.steps
    if not merged:
        return 0.0
    acc.history = [(s, q, n) for (s, q), n in merged.items()]  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        # PRV: "divide by zero encountered in log" inside opacus' prvs.py is harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        eps = acc.get_epsilon(delta=delta)  # type: ignore[attr-defined]
    return float(eps)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
    spent: Sequence[DpSgdEvent] = (),
) -> float:
    """Return the smallest sigma (to ``epsilon_tolerance``) whose epsilon is <= target.

    Binary search of :func:`opacus.accountants.utils.get_noise_multiplier` for one client's
    own ``sample_rate`` and its total planned ``steps`` (all rounds, all local epochs), so
    every client lands at or below ``target_epsilon`` whatever its data set size. With a
    ``spent`` history (a persisted ledger), the target covers that history *and* the
    planned steps: the sigma is the smallest whose composition with what was already
    spent stays at or below the target.

    Raises:
        InvalidPrivacyParameterError: bad inputs, or a target too small to reach.
        PrivacyBudgetExceededError: ``spent`` alone already reaches the target.
    """
    target = check_positive(target_epsilon, name="target_epsilon")
    delta = check_delta(delta)
    event = check_event((1.0, sample_rate, steps), where="calibration")
    if event.steps == 0:
        raise InvalidPrivacyParameterError("calibration.steps must be >= 1; got 0")
    if accountant not in ACCOUNTANTS:
        raise InvalidPrivacyParameterError(
            f"accountant must be one of rdp, prv; got {accountant!r}"
        )
    if not any(e.steps for e in spent):
        return _calibrate_cached(
            target, delta, event.sample_rate, event.steps, accountant, epsilon_tolerance
        )
    return _calibrate_after(
        target, delta, list(spent), event.sample_rate, event.steps, accountant, epsilon_tolerance
    )


def _trial_epsilon(
    spent: list[DpSgdEvent], sample_rate: float, steps: int, delta: float, accountant: str
) -> Callable[[float], float]:
    """``sigma -> epsilon(spent + one planned event at sigma)``, fast for RDP.

    RDP is additive: the history's curve is computed once and each trial adds one term,
    with Opacus' own orders and conversion (so it equals :func:`epsilon_from_history`).
    """
    if accountant != "rdp":
        return lambda sigma: epsilon_from_history(
            [*spent, DpSgdEvent(sigma, sample_rate, steps)], delta=delta, accountant=accountant
        )
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    base = np.zeros(len(orders))
    for e in spent:
        if e.steps:
            base += rdp_analysis.compute_rdp(
                q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=e.steps, orders=orders
            )

    def eps(sigma: float) -> float:
        curve = base + rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders
        )
        value, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=curve, delta=delta)
        return float(value)

    return eps


def _calibrate_after(
    target: float,
    delta: float,
    spent: list[DpSgdEvent],
    sample_rate: float,
    steps: int,
    accountant: str,
    epsilon_tolerance: float,
) -> float:
    """Bisection for the smallest sigma with ``eps(spent + planned) <= target``."""
    already = epsilon_from_history(spent, delta=delta, accountant=accountant)
    if already >= target:
        raise PrivacyBudgetExceededError(
            f"privacy.target_epsilon {target:g} is already reached by the ledger's history "
            f"(epsilon {already:.4g} at delta {delta:g}); no further round fits"
        )

    eps = _trial_epsilon(spent, sample_rate, steps, delta, accountant)
    low, high = 0.0, 1.0
    while eps(high) > target:
        low, high = high, high * 2
        if high > 1e6:
            raise InvalidPrivacyParameterError(
                f"target_epsilon {target:g} cannot be reached at delta {delta:g} after "
                f"epsilon {already:.4g} already spent"
            )
    for _ in range(60):  # eps(high) <= target throughout
        mid = (low + high) / 2
        value = eps(mid)
        if value > target:
            low = mid
        else:
            high = mid
            if target - value <= epsilon_tolerance:
                break
    return high


@functools.lru_cache(maxsize=256)
def _calibrate_cached(
    target: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    epsilon_tolerance: float,
) -> float:
    """The bisection itself; memoised because a client re-plans every round (~2 s each)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # Large trial sigmas hit the top RDP order; the bisection is unaffected.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as err:
        raise InvalidPrivacyParameterError(
            f"target_epsilon {target:g} cannot be reached at delta {delta:g} with sample "
            f"rate {sample_rate:g} over {steps} steps: {err}"
        ) from err
    logger.debug(
        "calibrated sigma=%.4f for eps=%g delta=%g q=%.4g steps=%d (%s)",
        sigma,
        target,
        delta,
        sample_rate,
        steps,
        accountant,
    )
    return float(sigma)


# ---------------------------------------------------------------------- dp-accounting
def dp_accounting_epsilon(
    history: Iterable[DpSgdEvent | Sequence[float]],
    *,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Return epsilon from Google ``dp-accounting``, independently of Opacus.

    Composes ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``
    for every event and asks ``RdpAccountant`` (Mironov 2017) or ``PLDAccountant``
    (privacy loss distributions; Koskela et al. 2020, Doroshenko et al. 2022).

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` events.
        delta: target delta in (0, 1).
        accountant: ``"rdp"`` or ``"pld"``.

    Raises:
        InvalidPrivacyParameterError: a bad delta, accountant name or event.
    """
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    delta = check_delta(delta)
    events = [check_event(e, where=f"history[{i}]") for i, e in enumerate(history)]
    events = [e for e in events if e.steps > 0]
    if accountant not in ("rdp", "pld"):
        raise InvalidPrivacyParameterError(
            f"accountant must be one of rdp, pld; got {accountant!r}"
        )
    if not events:
        return 0.0
    composed = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
                ),
                e.steps,
            )
            for e in events
        ]
    )
    acc = (
        rdp_privacy_accountant.RdpAccountant()
        if accountant == "rdp"
        else pld_privacy_accountant.PLDAccountant()
    )
    # dp-accounting (absl logger) warns that a few fractional orders fail to converge; the
    # order is excluded and the result unaffected (epsilon is a minimum over the orders).
    # Entry points may silence the "absl" logger; library code leaves logging alone.
    acc.compose(composed)
    return float(acc.get_epsilon(delta))


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_DELTA",
    "AccountantName",
    "DpSgdEvent",
    "calibrate_noise_multiplier",
    "check_delta",
    "check_event",
    "check_positive",
    "dp_accounting_epsilon",
    "epsilon_from_history",
    "poisson_schedule",
    "resolve_delta",
    "resolve_user_delta",
]
