"""Privacy planning: the epsilon a configuration will spend, before anything runs.

Sample level (DP-SGD in each client, Abadi et al. 2016): a client with ``n`` examples,
batch size ``B`` and ``E`` local epochs runs ``E * int(1/q)`` Poisson steps per round at
``q = 1/ceil(n/B)`` (exactly what Opacus will record, see
:func:`~fedai.privacy.accounting.poisson_schedule`). The plan assumes the client trains in
*every* round (it cannot know in advance how often it is sampled), so its epsilon is an
upper bound on what the ledger will show. With ``target_epsilon`` each client's sigma is
calibrated for its own ``q`` and total steps, so small clients get more noise instead of
a larger epsilon.

User level (DP-FedAvg, McMahan et al. 2018): see :mod:`fedai.privacy.user_level`. The
plan states it for the client sampling the run will use (``privacy.client_sampling``) and
for both adversaries: outsiders (amplified) and a party that knows participation (not),
at the delta :func:`~fedai.privacy.accounting.resolve_user_delta` gives, the coordinator's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedai.config import ExperimentConfig, PrivacySection
from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import (
    DpSgdEvent,
    calibrate_noise_multiplier,
    epsilon_from_history,
    poisson_schedule,
    resolve_delta,
    resolve_user_delta,
)
from fedai.privacy.statement import UserLevelSetting, user_level_report
from fedai.privacy.user_level import calibrate_user_noise_multiplier

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPlan:
    """One client's planned sample-level spend.

    Attributes:
        client_id: the client.
        num_samples: local training examples ``n``.
        sample_rate: Poisson rate ``q`` Opacus will account at.
        steps_per_round: DP-SGD steps per round (all local epochs).
        rounds: rounds planned (every round of the run).
        noise_multiplier: sigma (given, or calibrated for ``target_epsilon``).
        delta: the delta epsilon is stated at.
        epsilon: planned epsilon after ``rounds`` rounds.
        accountant: ``rdp`` or ``prv``.
        within_budget: False if ``epsilon`` exceeds ``budget_epsilon``; None if no budget.
    """

    client_id: str
    num_samples: int
    sample_rate: float
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    delta: float
    epsilon: float
    accountant: str
    within_budget: bool | None

    @property
    def event(self) -> DpSgdEvent:
        """The per-round event this client will record."""
        return DpSgdEvent(self.noise_multiplier, self.sample_rate, self.steps_per_round)


def client_noise_multiplier(
    privacy: PrivacySection,
    *,
    num_samples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    delta: float,
    spent: Sequence[DpSgdEvent] = (),
) -> float:
    """Return the sigma a client must use: the configured one, or calibrated for its data.

    With ``privacy.target_epsilon`` the sigma is the smallest whose epsilon after
    ``rounds`` rounds of ``local_epochs`` epochs at this client's own Poisson rate stays
    at or below the target (per-client calibration). ``spent`` is what the client's ledger
    already holds; the target then covers it, and ``rounds`` is the rounds still to come.

    Raises:
        InvalidPrivacyParameterError: mode ``none``, or an unreachable target.
        PrivacyBudgetExceededError: ``spent`` alone already reaches the target.
    """
    if privacy.mode == "none":
        raise InvalidPrivacyParameterError("privacy.mode is 'none': there is no noise to plan")
    if privacy.noise_multiplier is not None:
        return float(privacy.noise_multiplier)
    if privacy.target_epsilon is None:  # pragma: no cover - config validation forbids it
        raise InvalidPrivacyParameterError("privacy needs noise_multiplier or target_epsilon")
    q, steps = poisson_schedule(num_samples=num_samples, batch_size=batch_size)
    return calibrate_noise_multiplier(
        target_epsilon=privacy.target_epsilon,
        delta=delta,
        sample_rate=q,
        steps=steps * local_epochs * rounds,
        accountant=privacy.accountant,
        spent=spent,
    )


def plan_client(
    privacy: PrivacySection,
    *,
    client_id: str,
    num_samples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
) -> ClientPlan:
    """Return the :class:`ClientPlan` of one client under ``privacy``."""
    delta = resolve_delta(privacy.delta, num_samples=num_samples)
    sigma = client_noise_multiplier(
        privacy,
        num_samples=num_samples,
        batch_size=batch_size,
        local_epochs=local_epochs,
        rounds=rounds,
        delta=delta,
    )
    q, steps = poisson_schedule(num_samples=num_samples, batch_size=batch_size)
    per_round = steps * local_epochs
    eps = epsilon_from_history(
        [DpSgdEvent(sigma, q, per_round * rounds)], delta=delta, accountant=privacy.accountant
    )
    budget = privacy.budget_epsilon
    return ClientPlan(
        client_id=client_id,
        num_samples=num_samples,
        sample_rate=q,
        steps_per_round=per_round,
        rounds=rounds,
        noise_multiplier=sigma,
        delta=delta,
        epsilon=eps,
        accountant=privacy.accountant,
        within_budget=None if budget is None else eps <= budget,
    )


def plan_sample_level(
    cfg: ExperimentConfig, *, client_sizes: Mapping[str, int] | Sequence[int]
) -> list[ClientPlan]:
    """Return every client's plan for ``cfg`` given each client's training-set size.

    Raises:
        InvalidPrivacyParameterError: ``privacy.mode`` is ``none`` or a size is below 1.
    """
    sizes = (
        dict(client_sizes)
        if isinstance(client_sizes, Mapping)
        else {str(i): n for i, n in enumerate(client_sizes)}
    )
    plans = []
    for cid, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidPrivacyParameterError(
                f"client {cid} size must be an integer >= 1; got {n!r}"
            )
        plans.append(
            plan_client(
                cfg.privacy,
                client_id=cid,
                num_samples=n,
                batch_size=cfg.train.batch_size,
                local_epochs=cfg.train.local_epochs,
                rounds=cfg.experiment.rounds,
            )
        )
    return plans


def client_sizes_from_config(cfg: ExperimentConfig) -> dict[str, int]:
    """Return each client's training-set size by partitioning the config's data set."""
    from fedai.data import load_federated

    return {c.client_id: len(c.y_train) for c in load_federated(cfg)}


def plan_user_level(
    *,
    population: int,
    clients_per_round: int,
    rounds: int,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    clipping_norm: float = 1.0,
    accountant: str = "rdp",
    client_sampling: str = "poisson",
) -> dict[str, Any]:
    """Return the user-level report; with ``target_epsilon``, calibrate sigma first.

    The calibration targets the outsider (amplified) epsilon of ``client_sampling``
    (RDP; PLD when ``accountant`` is ``prv`` and the sampling is Poisson).

    Raises:
        InvalidPrivacyParameterError: not exactly one of sigma / target, or bad values.
    """
    both_or_none = (noise_multiplier is None) == (target_epsilon is None)
    if both_or_none:
        raise InvalidPrivacyParameterError(
            "give exactly one of noise_multiplier and target_epsilon; got "
            f"noise_multiplier={noise_multiplier!r}, target_epsilon={target_epsilon!r}"
        )
    sigma = noise_multiplier
    if target_epsilon is not None:
        sigma = calibrate_user_noise_multiplier(
            target_epsilon=target_epsilon,
            population=population,
            clients_per_round=clients_per_round,
            rounds=rounds,
            delta=delta,
            accountant="pld" if accountant == "prv" and client_sampling == "poisson" else "rdp",
            client_sampling=client_sampling,
        )
    if sigma is None:  # pragma: no cover - excluded above
        raise InvalidPrivacyParameterError("noise_multiplier is required")
    report = user_level_report(
        UserLevelSetting(
            population=population,
            clients_per_round=clients_per_round,
            noise_multiplier=sigma,
            rounds=rounds,
            delta=delta,
            clipping_norm=clipping_norm,
            client_sampling=client_sampling,
        )
    )
    report["calibrated_for"] = target_epsilon
    return report


def plan_config(
    cfg: ExperimentConfig, *, client_sizes: Mapping[str, int] | Sequence[int] | None = None
) -> dict[str, Any]:
    """Return the whole plan of ``cfg`` (sample level per client, user level) as JSON data.

    ``client_sizes`` defaults to partitioning the config's data set with :mod:`fedai.data`.
    """
    out: dict[str, Any] = {"mode": cfg.privacy.mode, "sample_level": None, "user_level": None}
    if cfg.privacy.mode == "none":
        return out
    sizes = client_sizes if client_sizes is not None else client_sizes_from_config(cfg)
    plans = plan_sample_level(cfg, client_sizes=sizes)
    out["sample_level"] = {
        "clients": [asdict(p) for p in plans],
        "max_epsilon": max(p.epsilon for p in plans),
        "budget_epsilon": cfg.privacy.budget_epsilon,
        "rounds_assumed": cfg.experiment.rounds,
    }
    if cfg.privacy.mode == "local+user":
        population = cfg.experiment.num_clients
        out["user_level"] = plan_user_level(
            population=population,
            clients_per_round=cfg.experiment.clients_per_round,
            rounds=cfg.experiment.rounds,
            delta=resolve_user_delta(cfg.privacy.delta, population=population),
            noise_multiplier=cfg.privacy.user_noise_multiplier,
            clipping_norm=cfg.privacy.user_clipping_norm,
            client_sampling=cfg.privacy.user_client_sampling or "poisson",
        )
    return out


__all__ = [
    "ClientPlan",
    "client_noise_multiplier",
    "client_sizes_from_config",
    "plan_client",
    "plan_config",
    "plan_sample_level",
    "plan_user_level",
]
