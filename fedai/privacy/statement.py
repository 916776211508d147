"""One privacy statement for a run: per-client sample-level epsilon beside user-level epsilon.

Sample-level epsilon (DP-SGD inside each client, Abadi et al. 2016) protects one training
example of one client; user-level epsilon (DP-FedAvg, McMahan et al. 2018) protects a
client's whole contribution in the aggregate. They bound different things and do not
add up into one number, so the statement reports them side by side, each with its delta
and accountant named, and reports every client (clients can use different sigmas and
sample rates), not just a mean.

User-level epsilon itself depends on who the adversary is
(:mod:`fedai.privacy.client_sampling`): against outsiders, who cannot tell who took part,
sampling amplifies privacy; a party that knows participation (the coordinator) gets
none. The statement gives both, each with its assumption in words.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedai.privacy.client_sampling import (
    PARTICIPATION_KNOWN_ASSUMPTION,
    outsider_assumption,
    participation_rounds_bound,
)
from fedai.privacy.ledger import PrivacyLedger
from fedai.privacy.user_level import (
    NEIGHBOURING_RELATION,
    check_client_sampling,
    participation_known_epsilon,
    user_level_epsilon,
    user_level_sample_rate,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserLevelSetting:
    """The user-level DP parameters of a run (``privacy.mode = "local+user"``).

    ``delta`` should come from :func:`fedai.privacy.accounting.resolve_user_delta`, the
    rule the coordinator uses too.
    """

    population: int
    clients_per_round: int
    noise_multiplier: float
    rounds: int
    delta: float
    clipping_norm: float = 1.0
    client_sampling: str = "poisson"


def user_level_report(setting: UserLevelSetting) -> dict[str, Any]:
    """Return the planned user-level epsilons for ``setting``, both adversaries.

    * ``against_outsiders``: amplified by the sampling (:func:`user_level_epsilon`), RDP
      and, for Poisson sampling, PLD (dp-accounting has no PLD for fixed-size sampling:
      ``epsilon_pld`` is None and ``pld_unavailable`` says why);
    * ``participation_known``: no amplification
      (:func:`~fedai.privacy.user_level.participation_known_epsilon`) for a client in the
      expected ``round(q * rounds)`` rounds, and for the most-sampled client
      (``rounds_max``: with 99% probability no client takes part in more,
      :func:`~fedai.privacy.client_sampling.participation_rounds_bound`).

    ``epsilon_rdp`` / ``epsilon_pld`` at the top level repeat the outsider figure.

    Raises:
        InvalidPrivacyParameterError: a parameter outside its domain.
    """
    sampling = check_client_sampling(setting.client_sampling)
    q = user_level_sample_rate(
        population=setting.population, clients_per_round=setting.clients_per_round
    )
    common: dict[str, Any] = {
        "population": setting.population,
        "clients_per_round": setting.clients_per_round,
        "noise_multiplier": setting.noise_multiplier,
        "rounds": setting.rounds,
        "delta": setting.delta,
    }
    outsider: dict[str, float | None] = {
        name: user_level_epsilon(
            population=setting.population,
            clients_per_round=setting.clients_per_round,
            noise_multiplier=setting.noise_multiplier,
            rounds=setting.rounds,
            delta=setting.delta,
            accountant=name,
            client_sampling=sampling,
        )
        for name in (("rdp", "pld") if sampling == "poisson" else ("rdp",))
    }
    against_outsiders: dict[str, Any] = {
        "epsilon_rdp": outsider["rdp"],
        "epsilon_pld": outsider.get("pld"),
        "neighbouring_relation": NEIGHBOURING_RELATION[sampling],
        "events": (
            "PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) x rounds"
            if sampling == "poisson"
            else "SampledWithoutReplacementDpEvent(population, clients_per_round, "
            "GaussianDpEvent(sigma / 2)) x rounds, RdpAccountant(REPLACE_ONE)"
        ),
        "assumption": outsider_assumption(
            sampling, sample_rate=q, clients_per_round=setting.clients_per_round
        ),
    }
    if sampling == "fixed":
        against_outsiders["pld_unavailable"] = (
            "dp-accounting's PLDAccountant has no sampling-without-replacement event"
        )
    expected = max(1, round(q * setting.rounds))
    most = participation_rounds_bound(
        population=setting.population, sample_rate=q, rounds=setting.rounds
    )

    def known(k: int, accountant: str) -> float:
        return participation_known_epsilon(
            [setting.noise_multiplier] * k,
            delta=setting.delta,
            client_sampling=sampling,
            accountant=accountant,
        )

    participation = {
        "rounds": expected,
        "epsilon_rdp": known(expected, "rdp"),
        "epsilon_pld": known(expected, "pld"),
        "rounds_max": most,
        "epsilon_rdp_max": known(most, "rdp"),
        "epsilon_pld_max": known(most, "pld"),
        "neighbouring_relation": NEIGHBOURING_RELATION[sampling],
        "events": "GaussianDpEvent(sigma / s) x rounds taken part in, s = "
        + ("1" if sampling == "poisson" else "2"),
        "assumption": PARTICIPATION_KNOWN_ASSUMPTION
        + f"; 'rounds' is the expected count q*T, 'rounds_max' the count no client "
        f"exceeds with 99% probability (Binomial({setting.rounds}, {q:g}), union bound "
        f"over {setting.population} clients)",
    }
    return {
        **common,
        "sample_rate": q,
        "clipping_norm": setting.clipping_norm,
        "client_sampling": sampling,
        "epsilon_rdp": outsider["rdp"],
        "epsilon_pld": outsider.get("pld"),
        "against_outsiders": against_outsiders,
        "participation_known": participation,
        "accountants": "Google dp-accounting RdpAccountant / PLDAccountant",
    }


def privacy_statement(
    *,
    ledgers: Iterable[PrivacyLedger] = (),
    user_level: UserLevelSetting | None = None,
) -> dict[str, Any]:
    """Return the privacy statement of a run as a JSON-able dict with a ``text`` summary.

    Args:
        ledgers: every client's ledger (sample-level DP-SGD spend).
        user_level: the user-level setting, or ``None`` if the mode has no user-level DP.

    Returns:
        ``{"sample_level": {...per client...}, "user_level": {...} | None, "text": str}``.
    """
    clients: dict[str, dict[str, Any]] = {}
    for ledger in ledgers:
        clients[ledger.client_id] = {
            "epsilon": ledger.epsilon(),
            "delta": ledger.delta,
            "accountant": ledger.accountant,
            "rounds_trained": len(ledger),
            "budget_epsilon": ledger.budget_epsilon,
            "exhausted": ledger.exhausted,
            "history": [list(e) for e in ledger.history],
        }
    epsilons = [c["epsilon"] for c in clients.values()]
    sample_level: dict[str, Any] | None = None
    lines: list[str] = []
    if clients:
        sample_level = {
            "clients": clients,
            "max_epsilon": max(epsilons),
            "mean_epsilon": statistics.fmean(epsilons),
            "min_epsilon": min(epsilons),
        }
        worst = max(clients, key=lambda k: clients[k]["epsilon"])
        w = clients[worst]
        lines.append(
            f"sample-level (DP-SGD per client): max epsilon {w['epsilon']:.3f} (client "
            f"{worst}) at delta {w['delta']:g} ({w['accountant']}), over {len(clients)} "
            f"clients; mean {sample_level['mean_epsilon']:.3f}"
        )
    else:
        lines.append("sample-level: no DP-SGD (no client ledgers)")
    user: dict[str, Any] | None = None
    if user_level is not None:
        user = user_level_report(user_level)
        lines.extend(user_level_lines(user))
    else:
        lines.append("user-level: none (privacy.mode is not local+user)")
    return {"sample_level": sample_level, "user_level": user, "text": "\n".join(lines)}


def user_level_lines(user: dict[str, Any]) -> list[str]:
    """Return the human-readable lines of a :func:`user_level_report`."""

    def pair(rdp: float, pld: float | None) -> str:
        return f"{rdp:.3f} (RDP)" + (f" / {pld:.3f} (PLD)" if pld is not None else "")

    out = user["against_outsiders"]
    known = user["participation_known"]
    return [
        f"user-level (DP-FedAvg aggregate, {user['client_sampling']} client sampling, "
        f"q={user['sample_rate']:g}, sigma={user['noise_multiplier']:g}, "
        f"{user['rounds']} rounds, delta {user['delta']:g}):",
        f"  against outsiders: epsilon {pair(out['epsilon_rdp'], out['epsilon_pld'])}",
        f"    relation: {out['neighbouring_relation']}",
        f"    assumes: {out['assumption']}",
        f"  participation known (no amplification): epsilon "
        f"{pair(known['epsilon_rdp'], known['epsilon_pld'])} for a client in "
        f"{known['rounds']} rounds (the expected count); "
        f"{pair(known['epsilon_rdp_max'], known['epsilon_pld_max'])} in "
        f"{known['rounds_max']} (no client takes part more often, with 99% probability)",
        f"    assumes: {PARTICIPATION_KNOWN_ASSUMPTION}",
    ]


__all__ = ["UserLevelSetting", "privacy_statement", "user_level_lines", "user_level_report"]
