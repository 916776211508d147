"""User-level DP of the aggregate: update clipping, distributed Gaussian noise, accounting.

DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018, "Learning Differentially Private
Recurrent Language Models", ICLR): each sampled client clips its whole model update
``Δ_i`` to L2 norm ``C``; the sum of the ``m`` clipped updates then has sensitivity ``C``
to adding or removing one client, and Gaussian noise ``N(0, (sigma*C)²)`` on the sum makes one
round a Gaussian mechanism with noise multiplier ``sigma``. fedai's coordinator only adds
(possibly encrypted) payloads (:mod:`fedai.aggregation`), so it cannot add that noise;
instead every sampled client adds its share ``N(0, (sigma*C)² / m)`` and the ``m`` shares sum
to ``N(0, (sigma*C)²)`` (distributed noise, as in distributed DP with secure aggregation,
Kairouz, Liu & Steinke 2021).

Preconditions the caller (ServerApp / ClientApp glue) must keep:

* the aggregation weight of each client is 1 (uniform FedAvg on updates); a weight
  ``n_i`` multiplies the sensitivity by ``max n_i``;
* ``num_sampled_clients`` is the number of clients whose shares reach the sum; if fewer
  reply, the sum carries less noise: account with :func:`effective_noise_multiplier`;
* clients are sampled with probability ``q = clients_per_round / population`` per round
  (Poisson), which is what the subsampling amplification below assumes.

Accounting composes ``T`` rounds of ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` with
Google ``dp-accounting`` (RDP, Mironov 2017; PLD) or Opacus PRV (Gopi et al. 2021).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import (
    DpSgdEvent,
    check_delta,
    check_positive,
    dp_accounting_epsilon,
    epsilon_from_history,
)

logger = logging.getLogger(__name__)

USER_LEVEL_ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld", "prv")


@dataclass(frozen=True, slots=True)
class UserDpUpdate:
    """A privatised update and what happened to it.

    Attributes:
        update: the clipped and noised update (new arrays; inputs untouched).
        norm: the L2 norm of the update before clipping.
        clipped: whether clipping changed the update.
        noise_std: per-coordinate std of the noise this client added.
    """

    update: list[np.ndarray]
    norm: float
    clipped: bool
    noise_std: float


def global_l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """Return the L2 norm of all arrays flattened together (float64)."""
    return float(
        math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in arrays))
    )


def clip_update(
    update: Sequence[np.ndarray], *, clipping_norm: float
) -> tuple[list[np.ndarray], float]:
    """Scale ``update`` to L2 norm at most ``clipping_norm`` (McMahan et al. 2018, Alg. 1).

    Returns new float64 arrays and the original norm; a zero (or already small) update is
    returned unchanged.

    Raises:
        InvalidPrivacyParameterError: ``clipping_norm`` not > 0, or a non-finite update.
    """
    c = check_positive(clipping_norm, name="clipping_norm")
    norm = global_l2_norm(update)
    if not math.isfinite(norm):
        raise InvalidPrivacyParameterError(f"update must be finite; got L2 norm {norm!r}")
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return [np.asarray(a, dtype=np.float64) * scale for a in update], norm


def distributed_noise_std(
    *, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int
) -> float:
    """Return one client's noise std ``sigma*C / sqrt(m)``; ``m`` shares sum to std ``sigma*C``.

    Raises:
        InvalidPrivacyParameterError: a parameter outside its domain.
    """
    sigma = check_positive(noise_multiplier, name="noise_multiplier")
    c = check_positive(clipping_norm, name="clipping_norm")
    m = _check_count(num_sampled_clients, name="num_sampled_clients")
    return sigma * c / math.sqrt(m)


def clip_and_noise(
    update: Sequence[np.ndarray],
    *,
    clipping_norm: float,
    noise_multiplier: float,
    num_sampled_clients: int,
    rng: np.random.Generator,
) -> UserDpUpdate:
    """Clip ``update`` and add this client's share of the distributed Gaussian noise.

    Args:
        update: the client's model update ``w_local - w_global`` (not mutated).
        clipping_norm: ``C``, the L2 bound of a whole update.
        noise_multiplier: ``sigma`` of the *sum*.
        num_sampled_clients: ``m``, the number of clients whose shares are summed.
        rng: the noise source (production: ``np.random.default_rng()`` from OS entropy).

    Returns:
        A :class:`UserDpUpdate` holding new float64 arrays.

    Raises:
        InvalidPrivacyParameterError: bad parameters or a non-finite update.
    """
    std = distributed_noise_std(
        noise_multiplier=noise_multiplier,
        clipping_norm=clipping_norm,
        num_sampled_clients=num_sampled_clients,
    )
    clipped, norm = clip_update(update, clipping_norm=clipping_norm)
    noised = [a + rng.normal(0.0, std, size=a.shape) for a in clipped]
    return UserDpUpdate(update=noised, norm=norm, clipped=norm > clipping_norm, noise_std=std)


def effective_noise_multiplier(
    *, noise_multiplier: float, expected_clients: int, actual_clients: int
) -> float:
    """Return the sigma the sum really carries when only ``actual`` of ``expected`` shares came.

    Each share has variance ``(sigma*C)²/m``, so ``k`` shares carry ``sigma sqrt(k/m)``.

    Raises:
        InvalidPrivacyParameterError: bad counts (``actual`` must be in [1, expected]).
    """
    sigma = check_positive(noise_multiplier, name="noise_multiplier")
    m = _check_count(expected_clients, name="expected_clients")
    k = _check_count(actual_clients, name="actual_clients")
    if k > m:
        raise InvalidPrivacyParameterError(
            f"actual_clients must be <= expected_clients {m}; got {k}"
        )
    return sigma * math.sqrt(k / m)


def user_level_sample_rate(*, population: int, clients_per_round: int) -> float:
    """Return ``q = clients_per_round / population``.

    Raises:
        InvalidPrivacyParameterError: counts below 1 or ``clients_per_round > population``.
    """
    n = _check_count(population, name="population")
    m = _check_count(clients_per_round, name="clients_per_round")
    if m > n:
        raise InvalidPrivacyParameterError(f"clients_per_round must be <= population {n}; got {m}")
    return m / n


def user_level_epsilon(
    *,
    population: int,
    clients_per_round: int,
    noise_multiplier: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Return user-level epsilon of ``rounds`` rounds of DP-FedAvg with sampling amplification.

    ``T = rounds`` self-compositions of the Poisson-subsampled Gaussian mechanism with
    ``q = clients_per_round / population`` (McMahan et al. 2018; Mironov 2017 for RDP).
    For 100 clients, 10 per round, sigma = 1, 100 rounds, δ = 1e-5 this gives 7.90 (RDP) and
    7.05 (PLD / PRV).

    Args:
        population: number of clients that could be sampled.
        clients_per_round: expected number sampled per round.
        noise_multiplier: sigma of the noise on the sum, relative to the clipping norm.
        rounds: number of rounds ``T``.
        delta: target delta in (0, 1).
        accountant: ``"rdp"`` or ``"pld"`` (Google dp-accounting), or ``"prv"`` (Opacus).

    Raises:
        InvalidPrivacyParameterError: a parameter outside its domain.
    """
    q = user_level_sample_rate(population=population, clients_per_round=clients_per_round)
    sigma = check_positive(noise_multiplier, name="noise_multiplier")
    t = _check_count(rounds, name="rounds")
    delta = check_delta(delta)
    return _epsilon_of([DpSgdEvent(sigma, q, t)], delta=delta, accountant=accountant)


def _epsilon_of(history: list[DpSgdEvent], *, delta: float, accountant: str) -> float:
    """Epsilon of ``history`` with the named user-level accountant."""
    if accountant in ("rdp", "pld"):
        return dp_accounting_epsilon(history, delta=delta, accountant=accountant)
    if accountant == "prv":
        return epsilon_from_history(history, delta=delta, accountant="prv")
    raise InvalidPrivacyParameterError(
        f"accountant must be one of {', '.join(USER_LEVEL_ACCOUNTANTS)}; got {accountant!r}"
    )


def user_level_epsilon_of_rounds(
    *,
    population: int,
    clients_per_round: int,
    noise_multipliers: Sequence[float],
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Return user-level epsilon of rounds whose sums carried the given sigmas.

    Like :func:`user_level_epsilon`, but each round is its own subsampled Gaussian event,
    so a round where fewer than the sampled clients contributed (and the sum therefore
    carried only :func:`effective_noise_multiplier`) is accounted as what it was.

    Raises:
        InvalidPrivacyParameterError: a parameter outside its domain.
    """
    q = user_level_sample_rate(population=population, clients_per_round=clients_per_round)
    delta = check_delta(delta)
    history = [
        DpSgdEvent(check_positive(s, name="noise_multiplier"), q, 1) for s in noise_multipliers
    ]
    if not history:
        return 0.0
    return _epsilon_of(history, delta=delta, accountant=accountant)


def calibrate_user_noise_multiplier(
    *,
    target_epsilon: float,
    population: int,
    clients_per_round: int,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """Return the smallest sigma (to ``tolerance`` in epsilon) with user-level epsilon <= target.

    Raises:
        InvalidPrivacyParameterError: bad inputs or an unreachable target.
    """
    target = check_positive(target_epsilon, name="target_epsilon")

    def eps(sigma: float) -> float:
        return user_level_epsilon(
            population=population,
            clients_per_round=clients_per_round,
            noise_multiplier=sigma,
            rounds=rounds,
            delta=delta,
            accountant=accountant,
        )

    lo, hi = 0.0, 1.0
    eps_hi = eps(hi)
    while eps_hi > target:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            raise InvalidPrivacyParameterError(
                f"target_epsilon {target:g} cannot be reached at delta {delta:g}"
            )
        eps_hi = eps(hi)
    while target - eps_hi > tolerance:
        mid = (lo + hi) / 2
        e = eps(mid)
        if e <= target:
            hi, eps_hi = mid, e
        else:
            lo = mid
        if hi - lo < 1e-6:
            break
    return hi


def _check_count(value: int, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPrivacyParameterError(f"{name} must be an integer >= 1; got {value!r}")
    return value


__all__ = [
    "USER_LEVEL_ACCOUNTANTS",
    "UserDpUpdate",
    "calibrate_user_noise_multiplier",
    "clip_and_noise",
    "clip_update",
    "distributed_noise_std",
    "effective_noise_multiplier",
    "global_l2_norm",
    "user_level_epsilon",
    "user_level_epsilon_of_rounds",
    "user_level_sample_rate",
]
