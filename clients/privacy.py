"""Privacy glue of the ClientApp: where a client's ledger lives and one DP round.

The ledger (the client's whole DP-SGD history) persists across rounds although Flower
rebuilds the ClientApp for every message: in ``Context.state`` in simulation, and on disk
(atomic writes) under ``node_config["state-dir"]`` on a real node, so an agent restart
continues the history and never resets epsilon. The math is in :mod:`fedai.privacy`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from torch import nn

from fedai.config import ExperimentConfig
from fedai.data import ClientData
from fedai.errors import PolicyViolationError
from fedai.federation import keys
from fedai.policy import NodePolicy
from fedai.privacy.accounting import resolve_delta
from fedai.privacy.dpsgd import planned_event, private_round
from fedai.privacy.ledger import PrivacyLedger
from fedai.privacy.plan import client_noise_multiplier
from fedai.privacy.user_level import clip_and_noise
from fedai.strategies.fedprox import add_proximal_term
from fedai.training import make_loader, optimizer_for, partial_steps

logger = logging.getLogger(__name__)

STATE_LEDGER = "fedai.ledger"  # Context.state ConfigRecord holding the ledger JSON
LEDGER_FILE = "ledger-{client_id}.json"


class LedgerStore:
    """Loads and saves one client's ledger.

    On disk if the node has a state dir, else in ``Context.state``.
    """

    def __init__(self, context: Context, client_id: str) -> None:
        self.context = context
        self.client_id = client_id
        state_dir = context.node_config.get(keys.NODE_STATE_DIR)
        self.path = (
            Path(str(state_dir)) / LEDGER_FILE.format(client_id=client_id) if state_dir else None
        )

    def open(
        self, cfg: ExperimentConfig, *, num_samples: int, budget_epsilon: float | None
    ) -> PrivacyLedger:
        """Return the client's ledger (continued, never reset) under the current settings.

        ``budget_epsilon`` is the budget to apply (the node policy's narrowing of the
        coordinator's ``privacy.budget_epsilon``).
        """
        p = cfg.privacy
        delta = resolve_delta(p.delta, num_samples=num_samples)
        if self.path is not None:
            return PrivacyLedger.open(
                self.path,
                client_id=self.client_id,
                delta=delta,
                accountant=p.accountant,
                budget_epsilon=budget_epsilon,
            )
        record = self.context.state.config_records.get(STATE_LEDGER)
        if record is None:
            return PrivacyLedger(
                client_id=self.client_id,
                delta=delta,
                accountant=p.accountant,
                budget_epsilon=budget_epsilon,
            )
        stored = PrivacyLedger.from_json(str(record["json"]), source="Context.state ledger")
        return PrivacyLedger(
            client_id=self.client_id,
            delta=delta,
            accountant=p.accountant,
            budget_epsilon=budget_epsilon,
            entries=stored.entries,
            exhausted=stored.exhausted,
        )

    def save(self, ledger: PrivacyLedger) -> None:
        """Persist ``ledger`` (atomic file write on a real node)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ledger.save(self.path)
        else:
            self.context.state.config_records[STATE_LEDGER] = ConfigRecord(
                {"json": ledger.to_json()}
            )


def report(ledger: PrivacyLedger, *, noise_multiplier: float | None) -> str:
    """The privacy report a reply carries: cumulative epsilon and the whole history."""
    return json.dumps(
        {
            "epsilon": ledger.epsilon(),
            "delta": ledger.delta,
            "accountant": ledger.accountant,
            "noise_multiplier": noise_multiplier,
            "rounds_trained": len(ledger),
            "budget_epsilon": ledger.budget_epsilon,
            "exhausted": ledger.exhausted,
            "history": [list(e) for e in ledger.history],
        }
    )


def train_private(
    model: nn.Module,
    data: ClientData,
    cfg: ExperimentConfig,
    *,
    ledger: PrivacyLedger,
    round_: int,
    policy: NodePolicy | None = None,
    proximal_mu: float = 0.0,
    work_fraction: float = 1.0,
) -> tuple[float, float]:
    """One DP-SGD round on ``model`` (in place); returns (mean loss, sigma used).

    ``proximal_mu > 0`` adds FedProx's proximal step after clipping and noise
    (:func:`fedai.strategies.fedprox.add_proximal_term`); ``work_fraction < 1`` runs only
    that fraction of the planned steps (a straggler) and the ledger records what ran.

    Takes no seed on purpose: the Poisson batches and the noise both come from OS entropy
    (:func:`fedai.privacy.dpsgd.train_dp_sgd`). A seed the coordinator knows would let it
    rebuild every batch (no amplification by subsampling) or subtract the noise.

    Raises:
        PolicyViolationError: before training, if sigma is below the node policy's floor
            or the round would add more epsilon than the policy allows per round.
        PrivacyBudgetExceededError: before training, if the round would pass the budget.
    """
    t = cfg.train
    n = len(data.y_train)
    sigma = client_noise_multiplier(
        cfg.privacy,
        num_samples=n,
        batch_size=t.batch_size,
        local_epochs=t.local_epochs,
        # target_epsilon covers what the ledger already spent (earlier rounds, earlier
        # runs on this node) plus every round still to come in this run
        rounds=max(1, cfg.experiment.rounds - round_ + 1),
        delta=ledger.delta,
        spent=ledger.history,
    )
    if policy is not None:
        reason = policy.sigma_violation(sigma) or policy.round_epsilon_violation(
            ledger.projected_epsilon(
                planned_event(
                    noise_multiplier=sigma,
                    num_samples=n,
                    batch_size=t.batch_size,
                    epochs=t.local_epochs,
                )
            )
            - ledger.epsilon()
        )
        if reason is not None:
            raise PolicyViolationError(reason)
    loader = make_loader(data.x_train, data.y_train, batch_size=t.batch_size, shuffle=False)
    max_steps = None
    if work_fraction < 1:
        full = planned_event(
            noise_multiplier=sigma, num_samples=n, batch_size=t.batch_size, epochs=t.local_epochs
        )
        max_steps = partial_steps(full.steps, work_fraction)

    def optimizer_factory(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return add_proximal_term(optimizer_for(params, train=t), mu=proximal_mu)

    result, entry = private_round(
        model,
        ledger=ledger,
        round=round_,
        loader=loader,
        optimizer_factory=optimizer_factory,
        max_steps=max_steps,
        epochs=t.local_epochs,
        noise_multiplier=sigma,
        max_grad_norm=cfg.privacy.max_grad_norm,
        grad_sample_mode=cfg.privacy.grad_sample_mode,
        secure_mode=cfg.privacy.secure_mode,
    )
    model.load_state_dict(result.state_dict)
    logger.info(
        "client %s round %d: DP-SGD sigma %.3f C %.2f q %.4f steps %d -> epsilon %.3f (delta %g)",
        ledger.client_id,
        round_,
        sigma,
        cfg.privacy.max_grad_norm,
        result.event.sample_rate,
        result.event.steps,
        entry.epsilon,
        ledger.delta,
    )
    return result.mean_loss, sigma


def user_level_contribution(
    global_weights: list[np.ndarray],
    local: list[np.ndarray],
    cfg: ExperimentConfig,
    *,
    num_sampled: int,
    rng_factory: Callable[[], np.random.Generator] = np.random.default_rng,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Clip the update to ``user_clipping_norm`` and add this client's noise share.

    Returns the noised weights ``w_global + clip(update) + noise`` (to be encoded with
    weight 1: an example-count weight would multiply the sensitivity) and a small report.
    """
    update = [
        loc.astype(np.float64) - g.astype(np.float64)
        for g, loc in zip(global_weights, local, strict=True)
    ]
    out = clip_and_noise(
        update,
        clipping_norm=cfg.privacy.user_clipping_norm,
        noise_multiplier=cfg.privacy.user_noise_multiplier,
        num_sampled_clients=num_sampled,
        rng=rng_factory(),
    )
    weights = [
        (g.astype(np.float64) + u).astype(g.dtype)
        for g, u in zip(global_weights, out.update, strict=True)
    ]
    return weights, {"update_norm": out.norm, "clipped": out.clipped, "noise_std": out.noise_std}


__all__ = ["LedgerStore", "report", "train_private", "user_level_contribution"]
