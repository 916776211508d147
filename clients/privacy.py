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
why: a second training is a second, real privacy cost). A train message without a run id
is refused (:class:`~fedai.errors.ProtocolError`), whatever the privacy mode.

Lost ledgers: a train message also carries the coordinator's checkpointed view of this
client's ledger (rounds of the run it saw charged, the epsilon last reported). A ledger
that holds less, or less than its own high-water mark on disk, was lost or replaced: the
node refuses to train (:class:`~fedai.errors.LedgerContinuityError`) rather than start
its epsilon again from zero. A view lower than the ledger changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
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
from fedai.errors import LedgerContinuityError, LedgerError, PolicyViolationError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_float, as_int
from fedai.fileio import atomic_write
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
LEDGER_MARK_FILE = "ledger-{client_id}.mark"  # its high-water mark (entries it has held)
LEDGER_MARK_FORMAT = "fedai.ledger-mark"


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
    seen_charges: int = 0
    seen_epsilon: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, round_: int) -> RunRef:
        """Parse a train message's config: the run is mandatory, in every privacy mode.

        Without a run id a client cannot claim a round once: a re-sent round would be
        trained and charged again. ``seen_charges`` / ``seen_epsilon`` are the
        coordinator's checkpointed view of this client's ledger
        (:data:`~fedai.federation.keys.KEY_SEEN_CHARGES`,
        :data:`~fedai.federation.keys.KEY_SEEN_EPSILON`; 0 when it sends none).

        Raises:
            ProtocolError: no run id; a run id or session that is not a short printable
                string; a ``resumed-after`` that is not a round before ``round_``; a view
                that is not a count / a finite epsilon >= 0.
        """
        if keys.KEY_RUN_ID not in config:
            raise ProtocolError(
                f"train message must carry {keys.KEY_RUN_ID!r} (the coordinator's run id) "
                f"beside round {round_}; it does not, so the round cannot be claimed once"
            )
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
        charges = as_int(
            config.get(keys.KEY_SEEN_CHARGES, 0), what=keys.KEY_SEEN_CHARGES, lo=0, hi=10**9
        )
        epsilon = as_float(
            config.get(keys.KEY_SEEN_EPSILON, 0.0), what=keys.KEY_SEEN_EPSILON, lo=0.0, hi=1e12
        )
        return cls(str(run_id), str(session), after, charges, epsilon)


class LedgerStore:
    """Loads and saves one client's ledger.

    On disk if the node has a state dir, else in ``Context.state``. On disk, a small
    high-water mark beside the ledger (:data:`LEDGER_MARK_FILE`: how many entries the
    ledger has held) is rewritten after each save that adds entries, so a ledger file
    that is later missing or older than the mark is refused even when no coordinator
    remembers it (a new run, a coordinator that lost its own checkpoint). To start a
    node's accounting over is the operator's explicit choice: remove both files.
    """

    def __init__(self, context: Context, client_id: str) -> None:
        self.context = context
        self.client_id = client_id
        state_dir = context.node_config.get(keys.NODE_STATE_DIR)
        self.path = (
            Path(str(state_dir)) / LEDGER_FILE.format(client_id=client_id) if state_dir else None
        )
        self.mark_path = (
            None
            if self.path is None
            else self.path.with_name(LEDGER_MARK_FILE.format(client_id=client_id))
        )
        self._marked = 0  # entries the mark records (read by open, raised by save)

    @property
    def name(self) -> str:
        """The ledger as messages to the coordinator name it (its file name, no path)."""
        return f"ledger {self.path.name}" if self.path is not None else "ledger in Context.state"

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

        Continuity is checked first: the ledger must hold at least what its high-water
        mark records and what ``run``'s view of it claims
        (:meth:`PrivacyLedger.check_continuity`). The node decides: a lower claim changes
        nothing, a higher one makes it refuse (logged here with the ledger's full path).

        Raises:
            LedgerContinuityError: the ledger is missing or older than its mark or than
                the coordinator's checkpointed view; nothing is saved.
            LedgerError: the ledger or its mark is unreadable or corrupt.
        """
        ledger = self._open(cfg, num_samples=num_samples, budget_epsilon=budget_epsilon)
        try:
            self._check_continuity(ledger, run)
        except LedgerContinuityError as err:
            where = self.path if self.path is not None else "Context.state"
            logger.warning(
                "client %s refuses to train: %s (ledger at %s)", self.client_id, err, where
            )
            raise
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

    def _check_continuity(self, ledger: PrivacyLedger, run: RunRef | None) -> None:
        self._marked = self._read_mark()
        if len(ledger) < self._marked:
            state = "is missing" if len(ledger) == 0 else f"holds {len(ledger)} round(s)"
            raise LedgerContinuityError(
                f"client {self.client_id}: {self.name} {state} but its mark "
                f"{LEDGER_MARK_FILE.format(client_id=self.client_id)} records "
                f"{self._marked}: the ledger was lost or replaced; refusing to train from "
                "zero (restore it; removing both files starts this node's accounting over)",
                client_id=self.client_id,
            )
        if run is not None:
            ledger.check_continuity(
                run_id=run.run_id,
                seen_charges=run.seen_charges,
                seen_epsilon=run.seen_epsilon,
                source=self.name,
            )

    def _read_mark(self) -> int:
        """Entries the high-water mark records (0 without a mark).

        Raises:
            LedgerError: the mark exists but is unreadable or not this client's (never
                read as "no mark", which would let a lost ledger restart at zero).
        """
        path = self.mark_path
        if path is None or not os.path.lexists(path):
            return 0
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LedgerError(f"ledger mark {str(path)!r} cannot be read: {err}") from err
        entries = data.get("entries") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("format") != LEDGER_MARK_FORMAT
            or data.get("client_id") != self.client_id
            or isinstance(entries, bool)
            or not isinstance(entries, int)
            or entries < 0
        ):
            raise LedgerError(
                f"ledger mark {str(path)!r} must be a {LEDGER_MARK_FORMAT} object of client "
                f"{self.client_id!r} with entries >= 0; got {text[:80]!r}"
            )
        return entries

    def save(self, ledger: PrivacyLedger) -> None:
        """Persist ``ledger`` (atomic file write on a real node), then raise its mark.

        The mark is written after the ledger: a crash between the two leaves it lower
        than the ledger, which refuses nothing.

        Raises:
            LedgerError: the ledger or its mark cannot be written.
        """
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ledger.save(self.path)
            if self.mark_path is not None and len(ledger) > self._marked:
                mark = {
                    "format": LEDGER_MARK_FORMAT,
                    "client_id": self.client_id,
                    "entries": len(ledger),
                }
                try:
                    atomic_write(self.mark_path, json.dumps(mark, sort_keys=True) + "\n")
                except OSError as err:
                    raise LedgerError(
                        f"ledger mark {str(self.mark_path)!r} cannot be written: {err}"
                    ) from err
                self._marked = len(ledger)
        else:
            self.context.state.config_records[STATE_LEDGER] = ConfigRecord(
                {"json": ledger.to_json()}
            )


def report(ledger: PrivacyLedger, *, noise_multiplier: float | None, run_id: str = "") -> str:
    """The privacy report a reply carries: cumulative epsilon and the whole history.

    With ``run_id``, also ``run_rounds``: the rounds of that run the ledger charged
    (the count the coordinator checks against its own view, :mod:`server.rounds`).
    """
    extra = {"run_rounds": ledger.charges_in(run_id)} if run_id else {}
    return json.dumps(
        {
            **extra,
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
