"""Privacy glue of the ClientApp: where a client's ledger lives and one DP round.

The ledger (the client's whole DP-SGD history) persists across rounds although Flower
rebuilds the ClientApp for every message: in ``Context.state`` in simulation, and on disk
(atomic writes) under ``node_config["state-dir"]`` on a real node (``fedai simulate``
gives its simulated nodes one in the results directory), so an agent restart continues the
history and never resets epsilon. The math is in :mod:`fedai.privacy`.

Coordinator crashes: every train message names the run (:class:`RunRef`: run id, the
coordinator's session, and the round it resumed after). The ledger records the run id
with each charge, marks the rounds a resumed coordinator lost, and refuses to charge the
same (run id, round) twice (:meth:`fedai.privacy.ledger.PrivacyLedger.start_round` says
why: a second training is a second, real privacy cost).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from torch import nn

from fedai.config import ExperimentConfig
from fedai.data import ClientData
from fedai.errors import PolicyViolationError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_int
from fedai.policy import NodePolicy
from fedai.privacy.accounting import resolve_delta
from fedai.privacy.dpsgd import planned_event, private_round
from fedai.privacy.ledger import MAX_ID_CHARS, PrivacyLedger
from fedai.privacy.plan import client_noise_multiplier
from fedai.privacy.user_level import clip_and_noise
from fedai.strategies.fedprox import add_proximal_term
from fedai.training import make_loader, optimizer_for, partial_steps

logger = logging.getLogger(__name__)

STATE_LEDGER = "fedai.ledger"  # Context.state ConfigRecord holding the ledger JSON
LEDGER_FILE = "ledger-{client_id}.json"


@dataclass(frozen=True, slots=True)
class RunRef:
    """The coordinator's run as a train message names it.

    Attributes:
        run_id: Random id of the run, kept when the coordinator resumes.
        session: Random id of the coordinator's current start.
        resumed_after: The last round the coordinator had completed when it (re)started
            (0 for a run that never resumed).
    """

    run_id: str
    session: str
    resumed_after: int

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, round_: int) -> RunRef | None:
        """Parse a train message's config; None if the coordinator names no run.

        Raises:
            ProtocolError: a run id or session that is not a short printable string, or
                a ``resumed-after`` that is not a round before ``round_``.
        """
        if keys.KEY_RUN_ID not in config:
            return None
        run_id, session = config[keys.KEY_RUN_ID], config.get(keys.KEY_RUN_SESSION, "")
        for key, value, empty_ok in (
            (keys.KEY_RUN_ID, run_id, False),
            (keys.KEY_RUN_SESSION, session, True),
        ):
            if (
                not isinstance(value, str)
                or len(value) > MAX_ID_CHARS
                or not (value or empty_ok)
                or not value.isprintable()
            ):
                raise ProtocolError(
                    f"{key} must be a printable string of 1..{MAX_ID_CHARS} characters; got "
                    f"{type(value).__name__} of length {len(str(value))}"
                )
        after = as_int(
            config.get(keys.KEY_RESUMED_AFTER, 0),
            what=keys.KEY_RESUMED_AFTER,
            lo=0,
            hi=max(0, round_ - 1),
        )
        return cls(str(run_id), str(session), after)


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
        self,
        cfg: ExperimentConfig,
        *,
        num_samples: int,
        budget_epsilon: float | None,
        run: RunRef | None = None,
    ) -> PrivacyLedger:
        """Return the client's ledger (continued, never reset) under the current settings.

        ``budget_epsilon`` is the budget to apply (the node policy's narrowing of the
        coordinator's ``privacy.budget_epsilon``). On a node with its own data the
        ledger's delta is the coordinator's ``privacy.delta`` only if it is narrower than
        the node's default ``min(1e-5, 1 / (10 n))``. With ``run``, the rounds of that run the
        coordinator lost (see :meth:`PrivacyLedger.mark_lost`) are marked and saved.
        """
        ledger = self._open(cfg, num_samples=num_samples, budget_epsilon=budget_epsilon)
        if (
            run is not None
            and run.session
            and ledger.mark_lost(
                run_id=run.run_id, session=run.session, resumed_after=run.resumed_after
            )
        ):
            self.save(ledger)
        return ledger

    def _open(
        self, cfg: ExperimentConfig, *, num_samples: int, budget_epsilon: float | None
    ) -> PrivacyLedger:
        p = cfg.privacy
        delta = resolve_delta(p.delta, num_samples=num_samples)
        if keys.NODE_DATA_PATH in self.context.node_config:
            # A real node's epsilon is stated at its own delta, which the coordinator may
            # narrow, never widen: at the coordinator's delta = 0.9 a spent history reads as
            # epsilon < 0 and no budget cap would ever refuse.
            node_delta = resolve_delta(None, num_samples=num_samples)
            if delta > node_delta:
                logger.warning(
                    "client %s: privacy.delta %g is above this node's %g; accounting at %g",
                    self.client_id,
                    delta,
                    node_delta,
                    node_delta,
                )
                delta = node_delta
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
            "rounds_lost": len(ledger.lost),
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
    run: RunRef | None = None,
) -> tuple[float, float]:
    """One DP-SGD round on ``model`` (in place); returns (mean loss, sigma used).

    With ``run``, the round is first claimed in the ledger for that run
    (:meth:`PrivacyLedger.start_round`) and recorded with its run id and session.

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
        RoundAlreadyChargedError: before training, if the ledger already charged this
            round of ``run``.
    """
    if run is not None:
        ledger.start_round(run_id=run.run_id, round=round_, session=run.session)
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


__all__ = ["LedgerStore", "RunRef", "report", "train_private", "user_level_contribution"]
