"""One privacy statement for a run: per-client sample-level epsilon beside user-level epsilon.

Sample-level epsilon (DP-SGD inside each client, Abadi et al. 2016) protects one training
example of one client; user-level epsilon (DP-FedAvg, McMahan et al. 2018) protects a
client's whole contribution in the aggregate. They bound different things and do not
add up into one number, so the statement reports them side by side, each with its delta
and accountant named, and reports every client (clients can use different sigmas and
sample rates), not just a mean.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fedai.privacy.ledger import PrivacyLedger
from fedai.privacy.user_level import user_level_epsilon, user_level_sample_rate

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserLevelSetting:
    """The user-level DP parameters of a run (``privacy.mode = "local+user"``)."""

    population: int
    clients_per_round: int
    noise_multiplier: float
    rounds: int
    delta: float
    clipping_norm: float = 1.0


def user_level_report(setting: UserLevelSetting) -> dict[str, Any]:
    """Return user-level epsilon under RDP and PLD (dp-accounting) for ``setting``."""
    q = user_level_sample_rate(
        population=setting.population, clients_per_round=setting.clients_per_round
    )
    eps = {
        name: user_level_epsilon(
            population=setting.population,
            clients_per_round=setting.clients_per_round,
            noise_multiplier=setting.noise_multiplier,
            rounds=setting.rounds,
            delta=setting.delta,
            accountant=name,
        )
        for name in ("rdp", "pld")
    }
    return {
        "population": setting.population,
        "clients_per_round": setting.clients_per_round,
        "noise_multiplier": setting.noise_multiplier,
        "rounds": setting.rounds,
        "delta": setting.delta,
        "sample_rate": q,
        "clipping_norm": setting.clipping_norm,
        "epsilon_rdp": eps["rdp"],
        "epsilon_pld": eps["pld"],
        "accountants": "dp-accounting RdpAccountant / PLDAccountant, "
        "PoissonSampledDpEvent(q, GaussianDpEvent(sigma)) x rounds",
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
        lines.append(
            f"user-level (DP-FedAvg aggregate): epsilon {user['epsilon_rdp']:.3f} (RDP) / "
            f"{user['epsilon_pld']:.3f} (PLD) at delta {user['delta']:g}, "
            f"q={user['sample_rate']:g}, "
            f"sigma={user['noise_multiplier']:g}, {user['rounds']} rounds"
        )
    else:
        lines.append("user-level: none (privacy.mode is not local+user)")
    return {"sample_level": sample_level, "user_level": user, "text": "\n".join(lines)}


__all__ = ["UserLevelSetting", "privacy_statement", "user_level_report"]
