"""Client sampling for user-level DP, and an accountant that matches the sampling run.

Amplification by sampling (Balle, Barthe & Gaboardi 2018, "Privacy Amplification by
Subsampling", NeurIPS) bounds what a party learns who does *not* know which clients took
part. So the coordinator's sample must be one nobody can recompute: fedai draws it from a
fresh OS-entropy generator each round, never from ``experiment.seed`` (which
``results.json`` publishes), and accounts exactly the sampling it ran:

* ``poisson``: every available client joins independently with probability
  ``q = clients_per_round / num_clients`` (:func:`poisson_sample`); each round is
  ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma_t))``, add-or-remove-one relation
  (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism");
* ``fixed``: exactly ``m`` of the ``n`` available clients, uniformly without replacement
  (:func:`fixed_size_sample`); each round is ``SampledWithoutReplacementDpEvent(n, m,
  GaussianDpEvent(sigma_t / 2))``, replace-one relation (Wang, Balle & Kasiviswanathan
  2019, Thm. 27; see :func:`fedai.privacy.user_level.fixed_size_epsilon`).

``sigma_t`` is the noise multiplier the round's sum really carried: every sampled client
adds ``sigma * C / sqrt(sampled)`` (the coordinator sends the count it drew), so the sum
carries ``sigma * sqrt(contributed / sampled)``
(:func:`fedai.privacy.user_level.effective_noise_multiplier`).

:class:`UserLevelAccountant` keeps the per-round history and states, side by side:

* the epsilon against outsiders (amplified, under the assumption above);
* the epsilon against a party that knows participation (the coordinator, or anyone
  holding ``results.json``, which lists who took part): no amplification, the Gaussian
  mechanism composed over the rounds each client actually took part in
  (:func:`fedai.privacy.user_level.participation_known_epsilon`), per client and the
  maximum;
* without secure aggregation, the epsilon against the coordinator, which then sees each
  update with only its sender's noise share ``sigma / sqrt(sampled)``.

Known gaps, stated rather than hidden: a Poisson round that draws nobody releases no
update, which reveals that nobody was drawn (probability ``(1 - q)^n`` per round); it is
accounted as a full round at the configured sigma, which does not formally cover that.
And FedAvg divides the sum by the number of contributions, so per-round models reveal
roughly how many took part; the Poisson analysis releases the noisy sum only.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import check_delta, check_positive
from fedai.privacy.user_level import (
    NEIGHBOURING_RELATION,
    SUM_SENSITIVITY,
    check_client_sampling,
    distributed_noise_std,
    effective_noise_multiplier,
    gaussian_epsilon,
)

logger = logging.getLogger(__name__)

ACCOUNTANT = "rdp"
ACCOUNTANT_TEXT = "rdp (Google dp-accounting RdpAccountant, default orders)"


# ---------------------------------------------------------------------- sampling
def poisson_sample(population: int, *, sample_rate: float, rng: np.random.Generator) -> list[int]:
    """Return the sorted indices of the clients that join: each independently w.p. ``q``.

    Args:
        population: number of clients that may join (indices ``0 .. population - 1``).
        sample_rate: ``q`` in (0, 1].
        rng: the randomness; production passes a fresh ``np.random.default_rng()`` (OS
            entropy), never one seeded from the experiment.

    Raises:
        InvalidPrivacyParameterError: ``population < 0`` or ``q`` outside (0, 1].
    """
    n = _check_size(population, name="population")
    q = _check_rate(sample_rate)
    return [int(i) for i in np.flatnonzero(rng.random(n) < q)]


def fixed_size_sample(population: int, *, sample_size: int, rng: np.random.Generator) -> list[int]:
    """Return ``min(sample_size, population)`` sorted indices, uniformly without replacement.

    Raises:
        InvalidPrivacyParameterError: a negative population or a sample size below 1.
    """
    n = _check_size(population, name="population")
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise InvalidPrivacyParameterError(
            f"sample_size must be an integer >= 1; got {sample_size!r}"
        )
    k = min(sample_size, n)
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


# ---------------------------------------------------------------------- one round
@dataclass(frozen=True, slots=True, kw_only=True)
class UserLevelRound:
    """One round as user-level accounting sees it (a row of the published history).

    Attributes:
        round: the round number.
        client_sampling: ``poisson`` or ``fixed``.
        sample_rate: ``q`` (``poisson``), or ``sampled / population`` (``fixed``).
        population: clients that could be drawn (not exhausted).
        sampled: clients drawn.
        contributed: clients whose update reached the sum.
        noise_multiplier: sigma (relative to ``C``) the round's sum carried; the
            configured sigma when nothing was summed (accounted as a full round).
        share_noise_multiplier: sigma (relative to ``C``) of one client's own noise share,
            ``sigma / sqrt(sampled)``; the configured sigma when nobody was drawn.
    """

    round: int
    client_sampling: str
    sample_rate: float
    population: int
    sampled: int
    contributed: int
    noise_multiplier: float
    share_noise_multiplier: float

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_client_sampling(self.client_sampling)
        for name in ("round", "population", "sampled", "contributed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be an integer >= 0; got {value!r}")
        if not problems and not self.contributed <= self.sampled <= self.population:
            problems.append(
                "counts must satisfy contributed <= sampled <= population; got "
                f"{self.contributed}, {self.sampled}, {self.population}"
            )
        if not problems and self.client_sampling == "fixed":
            if self.sampled < 1:
                problems.append(f"fixed-size rounds must sample >= 1 client; got {self.sampled}")
            elif not math.isclose(self.sample_rate, self.sampled / self.population):
                problems.append(
                    f"sample_rate of a fixed-size round must be sampled / population "
                    f"{self.sampled}/{self.population}; got {self.sample_rate!r}"
                )
        try:
            _check_rate(self.sample_rate)
            check_positive(self.noise_multiplier, name="noise_multiplier")
            check_positive(self.share_noise_multiplier, name="share_noise_multiplier")
        except InvalidPrivacyParameterError as err:
            problems.append(str(err))
        if problems:
            raise InvalidPrivacyParameterError(f"round {self.round!r}: " + "; ".join(problems))

    @classmethod
    def observed(
        cls,
        *,
        round: int,
        client_sampling: str,
        noise_multiplier: float,
        sample_rate: float,
        population: int,
        sampled: int,
        contributed: int,
    ) -> UserLevelRound:
        """Build a round from what happened; derive the sigmas from the configured one.

        Args:
            round: the round number.
            client_sampling: ``poisson`` or ``fixed``.
            noise_multiplier: the configured sigma of the sum (``user_noise_multiplier``).
            sample_rate: ``q`` for ``poisson`` (ignored for ``fixed``).
            population: clients that could be drawn.
            sampled: clients drawn.
            contributed: clients whose update reached the sum.

        Raises:
            InvalidPrivacyParameterError: inconsistent counts or a bad sigma.
        """
        sigma = check_positive(noise_multiplier, name="noise_multiplier")
        if contributed > 0:
            carried = effective_noise_multiplier(
                noise_multiplier=sigma, expected_clients=sampled, actual_clients=contributed
            )
        else:
            carried = sigma  # nothing summed: account a full round (conservative)
        share = (
            distributed_noise_std(
                noise_multiplier=sigma, clipping_norm=1.0, num_sampled_clients=sampled
            )
            if sampled > 0
            else sigma
        )
        if client_sampling == "fixed" and population > 0:
            sample_rate = sampled / population
        return cls(
            round=round,
            client_sampling=client_sampling,
            sample_rate=float(sample_rate),
            population=population,
            sampled=sampled,
            contributed=contributed,
            noise_multiplier=carried,
            share_noise_multiplier=share,
        )

    def outsider_event(self) -> Any:
        """The dp-accounting event of this round against a party that cannot see who took part."""
        import dp_accounting

        if self.client_sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(
                self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            )
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population,
            self.sampled,
            dp_accounting.GaussianDpEvent(self.noise_multiplier / SUM_SENSITIVITY["fixed"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``results.json`` ``user_level.history`` entries)."""
        return asdict(self)


# ---------------------------------------------------------------------- the accountant
class UserLevelAccountant:
    """The coordinator's user-level accountant: both figures, from the rounds actually run.

    The outsider figure composes the rounds' events in a dp-accounting ``RdpAccountant``,
    equal events grouped (``SelfComposedDpEvent``), so a long run without dropouts costs
    one event evaluation (~0.2 s) per report, not one per round; the participation-known
    figures compose Gaussians per client, which reduce to one Gaussian each
    (:func:`fedai.privacy.user_level.participation_known_epsilon`).

    Example:
        >>> acc = UserLevelAccountant(
        ...     client_sampling="poisson", delta=1e-5, population=100, clients_per_round=10
        ... )
        >>> acc.compose(
        ...     UserLevelRound.observed(round=1, client_sampling="poisson",
        ...         noise_multiplier=1.0, sample_rate=0.1, population=100, sampled=2,
        ...         contributed=2),
        ...     participants=["a", "b"],
        ... )
        >>> acc.epsilon_against_outsiders() < acc.epsilon_participation_known()["a"]
        True
    """

    def __init__(
        self,
        *,
        client_sampling: str,
        delta: float,
        population: int,
        clients_per_round: int,
        coordinator_sees_updates: bool = False,
    ) -> None:
        import dp_accounting

        self._sampling = check_client_sampling(client_sampling)
        self._delta = check_delta(delta)
        self._population = population
        self._clients_per_round = clients_per_round
        self._sees_updates = coordinator_sees_updates
        self._relation = (
            dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            if self._sampling == "poisson"
            else dp_accounting.NeighboringRelation.REPLACE_ONE
        )
        self._events: Counter[Any] = Counter()  # dp-accounting event -> rounds
        self._outsider: float | None = 0.0  # cached epsilon; None once stale
        self._rounds: list[UserLevelRound] = []
        self._taken_part: dict[str, list[int]] = {}  # client -> indices into _rounds
        self._cache: dict[float, float] = {}  # Gaussian precision -> epsilon

    @property
    def history(self) -> tuple[UserLevelRound, ...]:
        """Every round composed so far."""
        return tuple(self._rounds)

    @property
    def delta(self) -> float:
        """The delta every figure is stated at."""
        return self._delta

    def compose(self, round_: UserLevelRound, *, participants: Iterable[str]) -> None:
        """Account one round; ``participants`` are the clients whose update reached the sum.

        Raises:
            InvalidPrivacyParameterError: the round's sampling differs from the
                accountant's, or dp-accounting cannot account its event (nothing composed).
        """
        who = sorted(set(participants))
        if round_.client_sampling != self._sampling:
            raise InvalidPrivacyParameterError(
                f"round {round_.round}: client_sampling must be {self._sampling!r}; "
                f"got {round_.client_sampling!r}"
            )
        if len(who) != round_.contributed:
            raise InvalidPrivacyParameterError(
                f"round {round_.round}: participants must number contributed "
                f"{round_.contributed}; got {len(who)}"
            )
        event = round_.outsider_event()
        if not self._new_rdp().supports(event):
            raise InvalidPrivacyParameterError(
                f"round {round_.round}: dp-accounting's RdpAccountant cannot account {event!r}"
            )
        self._events[event] += 1
        self._outsider = None
        self._rounds.append(round_)
        for cid in who:
            self._taken_part.setdefault(cid, []).append(len(self._rounds) - 1)

    def epsilon_against_outsiders(self) -> float:
        """Amplified epsilon over every round run (0.0 before the first)."""
        if self._outsider is None:
            import dp_accounting

            acc = self._new_rdp()
            acc.compose(
                dp_accounting.ComposedDpEvent(
                    [dp_accounting.SelfComposedDpEvent(e, n) for e, n in self._events.items()]
                )
            )
            self._outsider = float(acc.get_epsilon(self._delta))
        return self._outsider

    def _new_rdp(self) -> Any:
        from dp_accounting.rdp import rdp_privacy_accountant

        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=self._relation)

    def epsilon_participation_known(self) -> dict[str, float]:
        """Per client: epsilon when its participation is known and only sums are seen."""
        return {
            cid: self._gaussian([self._rounds[i].noise_multiplier for i in idx])
            for cid, idx in sorted(self._taken_part.items())
        }

    def epsilon_coordinator_sees_updates(self) -> dict[str, float]:
        """Per client: epsilon when each update is seen with only its own noise share."""
        return {
            cid: self._gaussian([self._rounds[i].share_noise_multiplier for i in idx])
            for cid, idx in sorted(self._taken_part.items())
        }

    def _gaussian(self, sigmas: Sequence[float]) -> float:
        s = SUM_SENSITIVITY[self._sampling]
        precision = sum((s / x) ** 2 for x in sigmas)
        if precision not in self._cache:
            self._cache[precision] = gaussian_epsilon(
                1.0 / math.sqrt(precision), delta=self._delta, accountant=ACCOUNTANT
            )
        return self._cache[precision]

    # ------------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        """Return the JSON view for ``results.json`` (``privacy.user_level``).

        Every figure names its delta, accountant, relation, events and assumption.
        ``round`` is this round's :class:`UserLevelRound` (``q``, sigmas, counts): the
        ``round`` entries of all rounds so far are the history every figure is computed
        from, and with each round's ``trained`` list (who took part) dp-accounting
        recomputes each figure independently. Only the latest round is written, so a
        record stays O(clients), not O(rounds).
        """
        q = self._clients_per_round / self._population
        outsider = self.epsilon_against_outsiders()
        known = self.epsilon_participation_known()
        relation = NEIGHBOURING_RELATION[self._sampling]
        rounds_of = {cid: len(idx) for cid, idx in self._taken_part.items()}
        out: dict[str, Any] = {
            "client_sampling": self._sampling,
            "epsilon": outsider,
            "delta": self._delta,
            "accountant": ACCOUNTANT,
            "sample_rate": q,
            "round": self._rounds[-1].to_dict() if self._rounds else None,
            "against_outsiders": {
                "epsilon": outsider,
                "delta": self._delta,
                "accountant": ACCOUNTANT_TEXT,
                "neighbouring_relation": relation,
                "events": _outsider_events_text(self._sampling),
                "assumption": outsider_assumption(
                    self._sampling, sample_rate=q, clients_per_round=self._clients_per_round
                ),
            },
            "participation_known": _known_view(
                known,
                rounds_of,
                delta=self._delta,
                relation=relation,
                events="GaussianDpEvent(noise_multiplier / s) for each round the client's "
                f"update reached the sum, s = {SUM_SENSITIVITY[self._sampling]:g}",
                assumption=PARTICIPATION_KNOWN_ASSUMPTION,
            ),
        }
        if self._sees_updates:
            out["coordinator_sees_updates"] = _known_view(
                self.epsilon_coordinator_sees_updates(),
                rounds_of,
                delta=self._delta,
                relation=relation,
                events="GaussianDpEvent(share_noise_multiplier / s) for each round the "
                f"client's update reached the sum, s = {SUM_SENSITIVITY[self._sampling]:g}",
                assumption=COORDINATOR_SEES_UPDATES_ASSUMPTION,
            )
        return out


PARTICIPATION_KNOWN_ASSUMPTION = (
    "the party knows which rounds the client took part in (the coordinator; anyone holding "
    "results.json, whose rounds list who trained) and sees only the noised sums: no "
    "amplification, the Gaussian mechanism composed over those rounds"
)
COORDINATOR_SEES_UPDATES_ASSUMPTION = (
    "secure_aggregation.scheme is 'none': the coordinator sees each client's update with "
    "only that client's own noise share, sigma / sqrt(sampled), in every round it took part in"
)


def outsider_assumption(client_sampling: str, *, sample_rate: float, clients_per_round: int) -> str:
    """Return the outsider figure's assumption in words."""
    if check_client_sampling(client_sampling) == "poisson":
        drawn = (
            f"Poisson sampling: each client joined each round independently with probability "
            f"q={sample_rate:g}"
        )
    else:
        drawn = (
            f"fixed-size sampling: exactly {clients_per_round} clients a round (all available "
            "ones once fewer remain), uniformly without replacement"
        )
    return (
        f"participation is secret: {drawn}, drawn from OS entropy (never experiment.seed); "
        "the party sees the models but not who took part. results.json lists who took part: "
        "it is the coordinator's record, and whoever holds it is a party that knows "
        "participation"
    )


def participation_rounds_bound(
    *, population: int, sample_rate: float, rounds: int, confidence: float = 0.99
) -> int:
    """Return a participation count no client exceeds with probability >= ``confidence``.

    A client's participation count is Binomial(``rounds``, ``q``) under either sampling
    (fixed-size sampling includes each client with probability ``m / n`` every round);
    the smallest ``k`` with ``population * P(Bin > k) <= 1 - confidence`` (union bound
    over clients) is returned. Plans use it for the participation-known figure of the
    most-sampled client.

    Raises:
        InvalidPrivacyParameterError: a parameter outside its domain.
    """
    from scipy.stats import binom

    n = _check_size(population, name="population")
    q = _check_rate(sample_rate)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidPrivacyParameterError(f"rounds must be an integer >= 1; got {rounds!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidPrivacyParameterError(f"confidence must be in (0, 1); got {confidence!r}")
    lo, hi = 0, rounds  # P(Bin > rounds) = 0, so hi qualifies
    while lo < hi:
        mid = (lo + hi) // 2
        if n * float(binom.sf(mid, rounds, q)) <= 1.0 - confidence:
            hi = mid
        else:
            lo = mid + 1
    return hi


def _outsider_events_text(client_sampling: str) -> str:
    if client_sampling == "poisson":
        return "PoissonSampledDpEvent(sample_rate, GaussianDpEvent(noise_multiplier)) per round"
    return (
        "SampledWithoutReplacementDpEvent(population, sampled, "
        "GaussianDpEvent(noise_multiplier / 2)) per round, RdpAccountant(REPLACE_ONE)"
    )


def _known_view(
    per_client: dict[str, float],
    rounds_of: dict[str, int],
    *,
    delta: float,
    relation: str,
    events: str,
    assumption: str,
) -> dict[str, Any]:
    worst = max(per_client, key=lambda c: (per_client[c], c)) if per_client else None
    return {
        "epsilon": per_client[worst] if worst is not None else 0.0,
        "client": worst,
        "rounds": rounds_of[worst] if worst is not None else 0,
        "delta": delta,
        "accountant": ACCOUNTANT_TEXT,
        "neighbouring_relation": relation,
        "events": events,
        "assumption": assumption,
        "clients": {
            cid: {"epsilon": eps, "rounds": rounds_of[cid]} for cid, eps in per_client.items()
        },
    }


def _check_size(value: int, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidPrivacyParameterError(f"{name} must be an integer >= 0; got {value!r}")
    return value


def _check_rate(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise InvalidPrivacyParameterError(f"sample_rate must be in (0, 1]; got {value!r}")
    return float(value)


__all__ = [
    "COORDINATOR_SEES_UPDATES_ASSUMPTION",
    "PARTICIPATION_KNOWN_ASSUMPTION",
    "UserLevelAccountant",
    "UserLevelRound",
    "fixed_size_sample",
    "outsider_assumption",
    "participation_rounds_bound",
    "poisson_sample",
]
