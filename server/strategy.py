"""The coordinator's strategies, in Flower's shape, over fedai's linear aggregation.

A round is ``sample -> configure_train -> aggregate_train -> configure_evaluate ->
accept`` (Flower's ``Strategy``: configure_train, aggregate_train, configure_evaluate,
aggregate_evaluate), driven by :class:`server.rounds.FederatedRun`, which keeps what
Flower's ``Strategy.start`` lacks: stable client ids, rollback of a rejected aggregate,
budget-aware sampling and a global model that stays encrypted.

:class:`LinearStrategy` runs every registered strategy (:mod:`fedai.strategies`): clients
encode ``n_i w_i``, the coordinator only adds (:class:`~fedai.aggregation.SecureSum`),
and the next global model follows the average ``avg = sum / N`` by the strategy's
:class:`~fedai.strategies.base.ServerOptimizer`:

* FedAvg, FedProx (stateless): the next model *is* the sum; clients divide.
* A server optimiser (FedAvgM, FedAdam, FedYogi, FedAdagrad) needs the plaintext average.
  In the clear the coordinator decodes it and steps. Under HE no coordinator ever has it,
  so **the sampled evaluators step**: the evaluate message carries the encrypted sum, the
  encrypted current model and the encrypted optimiser state; each evaluator decodes the
  three (bounds-checked), runs the same deterministic step, evaluates the new model and
  replies with the new model and state encrypted, plus a fingerprint (SHA-256) of what
  it computed. The coordinator accepts the step only if every evaluator's fingerprint
  agrees, and keeps the first evaluator's ciphertexts as the new global model and state.

  Why the state is kept *encrypted at the coordinator* rather than replicated on clients:
  clients are sampled, so a client replicating the state would miss every round it is
  not sampled for and could not catch up without the history of averages; a state that
  travels with the model needs no client history, survives client restarts, is saved
  with the coordinator's checkpoint like the model, and costs one extra model-sized
  payload per message. The coordinator learns nothing new: it holds ciphertexts only.
  Trust: as with the model itself, an evaluator could return ciphertexts that do not
  match its fingerprint; the coordinator cannot check ciphertexts, so this design (like
  fedai's whole protocol) assumes honest-but-curious parties.

  Because both sides run :meth:`ServerOptimizer.step` on the same float32 decodes and
  snap its output to the codec grid, an HE run gives bit for bit the plaintext run's
  model.

:class:`UserLevelDp` is a wrapper (Flower's ``DifferentialPrivacy*`` shape): it draws the
sample from OS entropy as ``privacy.client_sampling`` says and accounts each round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from fedai.aggregation import ArraySpec, Payload, PlainCodec, SecureSum, Shapes
from fedai.config import ExperimentConfig
from fedai.errors import ContributionError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import payload_to_record, record_to_payload
from fedai.models import ModelSpec, build_model, get_weights
from fedai.privacy.accounting import resolve_user_delta
from fedai.privacy.client_sampling import (
    UserLevelAccountant,
    UserLevelRound,
    fixed_size_sample,
    poisson_sample,
)
from fedai.results import RoundRecord
from fedai.strategies import ServerOptimizer, build_optimizer, hyperparameters_of
from server.transport import ClientInfo, Transport, clip_text

logger = logging.getLogger(__name__)

Config = dict[str, bool | int | float | str]
SALT_STRAGGLERS = 0x57A6
SALT_EVALUATORS = 0xE7A1


@dataclass(slots=True)
class GlobalModel:
    """The global model as the coordinator holds it (possibly encrypted).

    ``payload`` decodes to the model with ``weight`` (None: the round-1 model every party
    builds from the seed); ``state`` is the server optimiser's state (weight 1).
    """

    payload: Payload | None = None
    weight: float = 0.0
    state: Payload | None = None


@dataclass(slots=True)
class Candidate:
    """A round's aggregate before the clients accept it.

    ``next_model`` is set when the next global model is already known to the coordinator
    (FedAvg's sum, or a server step taken in the clear); otherwise evaluators step.
    """

    total: Payload
    total_weight: float
    next_model: GlobalModel | None = None


@dataclass(slots=True)
class TrainPlan:
    """Who trains this round and with which instructions."""

    node_ids: list[int]
    arrays: ArrayRecord
    config: Config
    per_node: dict[int, Config] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)  # node -> why it does not train


@dataclass(slots=True)
class EvaluatePlan:
    """Who evaluates the candidate, and what they receive."""

    node_ids: list[int]
    arrays: ArrayRecord
    config: Config
    records: dict[str, ArrayRecord] = field(default_factory=dict)


class LinearStrategy:
    """Every registered strategy over linear (secure) aggregation; see the module doc."""

    def __init__(self, cfg: ExperimentConfig, *, summer: SecureSum) -> None:
        self.cfg = cfg
        self.summer = summer
        self.optimizer: ServerOptimizer = build_optimizer(
            cfg.strategy.name, hyperparameters_of(cfg.strategy)
        )
        self.in_clear = cfg.secure_aggregation.scheme == "none"
        section = cfg.secure_aggregation
        self._codec = PlainCodec(bound=section.update_bound, round_decimals=section.round_decimals)
        self.spec: ModelSpec | None = None
        self.shapes: list[tuple[int, ...]] = []
        self.layout: Shapes = []  # the shapes with their dtypes: what contributions carry

    def bind(
        self,
        spec: ModelSpec,
        shapes: list[tuple[int, ...]],
        *,
        layout: Sequence[ArraySpec] | None = None,
    ) -> None:
        """Learn the model's spec and layout (after discovery).

        ``layout`` declares the contributions' dtypes too (the model's, e.g. float32): the
        sum blames whatever differs from it, never the honest contributions.
        """
        self.spec, self.shapes = spec, shapes
        self.layout = list(layout) if layout is not None else list(shapes)

    @property
    def stepped_layout(self) -> list[ArraySpec]:
        """The layout of a model stepped by the server optimiser: float64 (its math)."""
        return [ArraySpec(tuple(s), 8) for s in self.shapes]

    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        """The layout of the server optimiser's state."""
        return [s for _ in range(self.optimizer.state_slots) for s in self.shapes]

    # ------------------------------------------------------------------ train
    def sample(self, able: list[ClientInfo], round_: int) -> list[int]:
        """Exactly ``clients_per_round`` of ``able`` from the seed and round, by client id.

        The same sample under every backend, so non-DP runs are bit-reproducible.
        """
        e = self.cfg.experiment
        k = min(e.clients_per_round, len(able))
        rng = np.random.default_rng([e.seed, round_])
        chosen = rng.choice(len(able), size=k, replace=False) if k < len(able) else range(k)
        return [able[int(j)].node_id for j in sorted(int(j) for j in chosen)]

    def configure_train(
        self, round_: int, sampled: list[ClientInfo], model: GlobalModel
    ) -> TrainPlan:
        """The train message: the global model, and stragglers' work fractions.

        ``strategy.straggler_fraction`` of the sampled clients (chosen from the seed and
        round) get a work fraction ``u ~ U(0, 1]``; with ``drop_stragglers`` they are left
        out instead.
        """
        arrays = ArrayRecord() if model.payload is None else payload_to_record(model.payload)
        config: Config = {
            keys.KEY_INIT: model.payload is None,
            keys.KEY_TOTAL_WEIGHT: float(model.weight),
            keys.KEY_NUM_SAMPLED: len(sampled),
        }
        plan = TrainPlan([c.node_id for c in sampled], arrays, config)
        s = self.cfg.strategy
        if s.straggler_fraction > 0 and sampled:
            rng = np.random.default_rng([self.cfg.experiment.seed, round_, SALT_STRAGGLERS])
            count = round(s.straggler_fraction * len(sampled))
            picked = sorted(int(j) for j in rng.choice(len(sampled), size=count, replace=False))
            for j in picked:
                nid = sampled[j].node_id
                fraction = float(1.0 - rng.random())  # in (0, 1]
                if s.drop_stragglers:
                    plan.dropped[nid] = "straggler dropped (strategy.drop_stragglers)"
                else:
                    plan.per_node[nid] = {keys.KEY_WORK_FRACTION: fraction}
            plan.node_ids = [n for n in plan.node_ids if n not in plan.dropped]
        return plan

    def aggregate_train(
        self,
        round_: int,
        good: list[tuple[str, Payload, float]],
        record: RoundRecord,
        model: GlobalModel,
    ) -> Candidate | None:
        """Sum the usable contributions, leaving out any that the sum itself rejects.

        In the clear a server optimiser steps here (the coordinator sees the average).
        """
        minimum = self.cfg.secure_aggregation.min_contributors
        summed: Payload | None = None
        while len(good) >= minimum and summed is None:
            try:
                summed = self.summer.sum([p for _, p, _ in good], shapes=self.layout)
            except ContributionError as err:
                cid = good[err.index][0]
                record.failures[cid] = f"{type(err).__name__}: {err}"
                logger.warning(
                    "round %d: contribution of client %s rejected by the sum: %s", round_, cid, err
                )
                del good[err.index]
            except Exception as err:  # the run goes on without this round
                record.status, record.reason = "failed", f"sum failed: {type(err).__name__}: {err}"
                logger.warning("round %d failed: %s; keeping the previous model", round_, err)
                return None
        record.trained = [cid for cid, _, _ in good]
        record.num_examples = weight = sum(n for _, _, n in good)
        if summed is None:
            record.status = "failed"
            record.reason = (
                f"{len(good)} usable contribution(s); at least {minimum} needed "
                "(secure_aggregation.min_contributors)"
                if good  # with none, min_contributors is not the cause: the clients are
                else f"no usable contribution: {len(record.failures)} client(s) failed, "
                f"{len(record.refused)} refused (see the round's failures / refused)"
            )
            logger.warning("round %d failed: %s; keeping the previous model", round_, record.reason)
            return None
        candidate = Candidate(summed, weight)
        if not self.optimizer.stateful:
            candidate.next_model = GlobalModel(summed, weight)
        elif self.in_clear:
            try:
                candidate.next_model = self._step_in_clear(candidate, model)
            except Exception as err:  # a bad aggregate fails the round, not the run
                record.status = "failed"
                record.reason = f"server step failed: {type(err).__name__}: {err}"
                logger.warning("round %d failed: %s", round_, record.reason)
                return None
        return candidate

    def _step_in_clear(self, candidate: Candidate, model: GlobalModel) -> GlobalModel:
        average = self._codec.decode(candidate.total, candidate.total_weight, self.shapes)
        current, state = self.decode_model(model)
        new_x, new_state = self.optimizer.step(
            model=current,
            average=average,
            state=state,
            round_decimals=self._codec.round_decimals,
        )
        return GlobalModel(self._codec.encode(new_x, 1.0), 1.0, self._codec.encode(new_state, 1.0))

    def decode_model(self, model: GlobalModel) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The plaintext model and state (clear runs only), as clients would decode them."""
        if self.spec is None:
            raise ProtocolError("strategy must be bound to a model spec before stepping")
        if model.payload is None:
            current = get_weights(build_model(self.spec, seed=self.cfg.experiment.seed))
        else:
            current = self._codec.decode(model.payload, model.weight, self.shapes)
        if model.state is None:
            state = [a.astype(np.float32) for a in self.optimizer.initial_state(self.shapes)]
        else:
            state = self._codec.decode(model.state, 1.0, self.state_shapes)
        return current, state

    # ------------------------------------------------------------------ evaluate
    def evaluators(self, able: list[ClientInfo], round_: int) -> list[int]:
        """Who evaluates this round: ``strategy.evaluate_clients`` from the seed, or all."""
        k = self.cfg.strategy.evaluate_clients
        ids = sorted(c.node_id for c in able)
        if k == 0 or k >= len(able):
            return ids
        ordered = sorted(able, key=lambda c: c.client_id)
        rng = np.random.default_rng([self.cfg.experiment.seed, round_, SALT_EVALUATORS])
        chosen = rng.choice(len(ordered), size=k, replace=False)
        return sorted(ordered[int(j)].node_id for j in chosen)

    def configure_evaluate(
        self, round_: int, candidate: Candidate, model: GlobalModel, node_ids: list[int]
    ) -> EvaluatePlan:
        """The evaluate message: the next model, or (HE server step) what to step from."""
        nxt = candidate.next_model
        if nxt is not None and nxt.payload is not None:
            return EvaluatePlan(
                node_ids,
                payload_to_record(nxt.payload),
                {keys.KEY_TOTAL_WEIGHT: float(nxt.weight)},
            )
        config: Config = {
            keys.KEY_TOTAL_WEIGHT: float(candidate.total_weight),
            keys.KEY_SERVER_STEP: True,
            keys.KEY_INIT: model.payload is None,
            keys.KEY_MODEL_WEIGHT: float(model.weight),
        }
        records: dict[str, ArrayRecord] = {}
        if model.payload is not None:
            records[keys.REC_MODEL] = payload_to_record(model.payload)
        if model.state is not None:
            records[keys.REC_STATE] = payload_to_record(model.state)
        return EvaluatePlan(node_ids, payload_to_record(candidate.total), config, records)

    def accept(self, round_: int, candidate: Candidate, replies: dict[str, Message]) -> GlobalModel:
        """The next global model once the evaluators accepted ``candidate``.

        ``replies``: the evaluators' OK replies by client id.

        Raises:
            ProtocolError: under an HE server step, the evaluators disagree, or the
                stepped model or state they returned cannot be used.
        """
        if candidate.next_model is not None:
            return candidate.next_model
        prints: dict[str, list[str]] = {}
        for cid in sorted(replies):
            rec = Transport.fedai_record(replies[cid])
            prints.setdefault(clip_text(rec.get(keys.KEY_FINGERPRINT, ""), 80), []).append(cid)
        if len(prints) != 1 or "" in prints:
            raise ProtocolError(
                "evaluators must agree on the server step; got fingerprints "
                + "; ".join(f"{fp[:12] or 'none'} from {', '.join(c)}" for fp, c in prints.items())
            )
        errors: list[str] = []
        for cid in sorted(replies):  # the first evaluator whose ciphertexts check out
            content = replies[cid].content
            try:
                payload = record_to_payload(content.array_records[keys.REC_ARRAYS])
                state = record_to_payload(content.array_records[keys.REC_STATE])
                stepped = self.stepped_layout  # what optimizer.step returns: float64
                slots = self.optimizer.state_slots
                self.summer.check(payload, stepped)
                self.summer.check(state, [s for _ in range(slots) for s in stepped])
            except Exception as err:  # try the next evaluator
                errors.append(f"{cid}: {type(err).__name__}: {err}")
                continue
            return GlobalModel(payload, 1.0, state)
        raise ProtocolError(
            "no evaluator returned a usable stepped model: " + "; ".join(errors[:3])
        )

    # ------------------------------------------------------------------ accounting
    def account(self, record: RoundRecord, *, population: int) -> dict[str, Any]:
        """Extra privacy figures for the round's record (none without a DP wrapper)."""
        return {}

    def restore(self, records: list[RoundRecord]) -> None:
        """Continue after ``records`` (a checkpoint): nothing to restore here.

        The server optimiser's state travels with the model (:attr:`GlobalModel.state`).
        """


class UserLevelDp:
    """User-level DP wrapper: secret client sampling and per-round accounting.

    The sample comes from a fresh generator per round, by default seeded from OS entropy
    (never ``experiment.seed``): amplification by sampling needs a sample nobody can
    recompute. Everything else is the inner strategy's.
    """

    def __init__(
        self,
        inner: LinearStrategy,
        *,
        rng_factory: Any = np.random.default_rng,
    ) -> None:
        cfg = inner.cfg
        sampling = cfg.privacy.user_client_sampling
        if sampling is None:
            raise ProtocolError(
                f"UserLevelDp needs privacy.mode 'local+user'; got {cfg.privacy.mode!r}"
            )
        self.inner = inner
        self.cfg = cfg
        self.sampling = sampling
        self._rng_factory = rng_factory
        e = cfg.experiment
        self.accountant = UserLevelAccountant(
            client_sampling=sampling,
            delta=resolve_user_delta(cfg.privacy.delta, population=e.num_clients),
            population=e.num_clients,
            clients_per_round=e.clients_per_round,
            coordinator_sees_updates=cfg.secure_aggregation.scheme == "none",
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sample(self, able: list[ClientInfo], round_: int) -> list[int]:
        """Poisson (rate ``clients_per_round / num_clients``, possibly nobody) or fixed."""
        e = self.cfg.experiment
        if self.sampling == "poisson":
            q = e.clients_per_round / e.num_clients
            picked = poisson_sample(len(able), sample_rate=q, rng=self._rng_factory())
        else:
            size = e.clients_per_round
            picked = fixed_size_sample(len(able), sample_size=size, rng=self._rng_factory())
        return [able[i].node_id for i in picked]

    def restore(self, records: list[RoundRecord]) -> None:
        """Re-compose the user-level accountant from a checkpoint's ``records``.

        Each record holds its round's :class:`UserLevelRound` (``privacy.user_level.round``)
        and who contributed (``trained``); the replayed epsilon must equal the last
        record's, or the records are not this accountant's history.

        Raises:
            ProtocolError: a record lacks its round, or the replay gives another epsilon.
        """
        for record in records:
            user = record.privacy.get("user_level")
            row = user.get("round") if isinstance(user, dict) else None
            if not isinstance(row, dict):
                raise ProtocolError(
                    f"round {record.round}: record must carry privacy.user_level.round; it does not"
                )
            self.accountant.compose(UserLevelRound(**row), participants=record.trained)
        if records:
            stored = float(records[-1].privacy["user_level"]["epsilon"])
            replayed = self.accountant.epsilon_against_outsiders()
            if not math.isclose(stored, replayed, rel_tol=1e-9, abs_tol=1e-12):
                raise ProtocolError(
                    f"user-level epsilon replayed from {len(records)} round(s) must be the "
                    f"recorded {stored!r}; got {replayed!r}"
                )

    def account(self, record: RoundRecord, *, population: int) -> dict[str, Any]:
        """Compose the round just run; return ``{"user_level": report}``."""
        p, e = self.cfg.privacy, self.cfg.experiment
        self.accountant.compose(
            UserLevelRound.observed(
                round=record.round,
                client_sampling=self.sampling,
                noise_multiplier=p.user_noise_multiplier,
                sample_rate=e.clients_per_round / e.num_clients,
                population=population,
                sampled=len(record.sampled),
                contributed=len(record.trained),
            ),
            participants=record.trained,
        )
        user = self.accountant.report()
        logger.info(
            "round %d user-level epsilon %.3f against outsiders (%s sampling), %.3f "
            "with participation known (delta %g, sigma %.3f, C %g)",
            record.round,
            user["epsilon"],
            self.sampling,
            user["participation_known"]["epsilon"],
            self.accountant.delta,
            p.user_noise_multiplier,
            p.user_clipping_norm,
        )
        return {"user_level": user}


Strategy = LinearStrategy | UserLevelDp


def build_strategy(
    cfg: ExperimentConfig, *, summer: SecureSum, rng_factory: Any = np.random.default_rng
) -> Strategy:
    """The configured strategy, wrapped for user-level DP when ``privacy.mode`` says so."""
    inner = LinearStrategy(cfg, summer=summer)
    if cfg.privacy.user_client_sampling is None:
        return inner
    return UserLevelDp(inner, rng_factory=rng_factory)


__all__ = [
    "Candidate",
    "EvaluatePlan",
    "GlobalModel",
    "LinearStrategy",
    "Strategy",
    "TrainPlan",
    "UserLevelDp",
    "build_strategy",
]
