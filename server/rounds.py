"""The coordinator's round loop.

fedai drives rounds itself instead of calling ``Strategy.start`` because it needs what
that loop cannot give: client identities that survive restarts (for the privacy ledger),
skipping clients whose privacy budget is spent, ending the run when nobody can train, a
global model that stays encrypted, and discarding a round whose aggregate fails the
clients' bounds check. The loop is

``sample -> configure_train -> (clients train) -> aggregate_train -> configure_evaluate ->
(clients evaluate, bounds-check) -> accept or roll back``

with the strategy steps in :mod:`server.strategy` (every registered strategy, and the
user-level DP wrapper) and messaging/discovery in :mod:`server.transport`. This module
validates replies (one bad reply costs only its client) and keeps the records.

Ledger continuity: every train message carries the coordinator's (checkpointed) view of
the receiving client's ledger (:meth:`FederatedRun.ledger_view`), so a node whose ledger
was lost refuses to train from zero; and a privacy report that falls below that view
(:func:`_report_drop`) is never kept: the client fails the round with the reason and is
not sampled again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedai.aggregation import ArraySpec, Payload, SecureSum, layout_of
from fedai.config import ExperimentConfig
from fedai.errors import ConfigError, LedgerContinuityError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_float, as_int, payload_to_record, reply_payload
from fedai.models import ModelSpec, build_model, get_weights
from fedai.privacy.ledger import epsilon_tolerance
from fedai.results import RoundRecord, RunSummary, utc_now
from fedai.schemes import weight_problems
from server.availability import Availability
from server.checkpointing import Checkpointer
from server.statistics import Statistics, gather
from server.strategy import Candidate, GlobalModel, Strategy, UserLevelDp, build_strategy
from server.transport import ClientInfo, Transport
from server.transport import clip_text as _text

if TYPE_CHECKING:
    from fedai.checkpoint import Checkpoint
    from fedai.monitoring import RunMetrics

logger = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord, int], None]


@dataclass(slots=True)
class RunOutcome:
    """What the loop ends with: the summary and the (possibly encrypted) global model."""

    summary: RunSummary
    spec: ModelSpec
    payload: Payload | None
    total_weight: float
    clients: dict[int, ClientInfo] = field(default_factory=dict)
    state: Payload | None = None  # the server optimiser's state (possibly encrypted)
    run_id: str = ""  # random, kept across resumes (server.checkpointing)


class FederatedRun:
    """Runs ``cfg.experiment.rounds`` rounds of sample -> train -> sum -> evaluate."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        grid: Grid,
        *,
        summer: SecureSum,
        on_round: RoundCallback | None = None,
        timeout: float | None = None,
        discovery_timeout: float = 120.0,
        rng_factory: Callable[[], np.random.Generator] = np.random.default_rng,
        metrics: RunMetrics | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        self.cfg = cfg
        self.grid = grid
        self.summer = summer
        self.on_round = on_round
        self.metrics = metrics
        self.transport = Transport(
            grid,
            num_clients=cfg.experiment.num_clients,
            config_json=cfg.to_json(),
            timeout=cfg.experiment.round_timeout if timeout is None else timeout,
            discovery_timeout=discovery_timeout,
        )
        self.availability = Availability(self.transport, cfg.experiment)
        self.strategy: Strategy = build_strategy(cfg, summer=summer, rng_factory=rng_factory)
        self._user_accountant = (
            self.strategy.accountant if isinstance(self.strategy, UserLevelDp) else None
        )
        self._privacy_reports: dict[str, dict[str, Any]] = {}  # latest report per client
        # Rounds of this run each client replied "trained" (ok): charges its ledger holds.
        self._charges_seen: dict[str, int] = {}
        self._shapes: list[tuple[int, ...]] | None = None  # the model's layout, once known
        self._layout: list[ArraySpec] | None = None  # ... with its dtypes (what is checked)
        self.statistics = Statistics(mode="none")  # federated feature statistics (stage 0)
        # Checkpoints into checkpoint_dir after every round; resume continues one.
        self.checkpointer = Checkpointer(checkpoint_dir, resume)
        self.transport.shared.update(self.checkpointer.identity())

    @property
    def excluded(self) -> dict[str, str]:
        """``"node <id>"`` -> why discovery left it out."""
        return self.transport.excluded

    def discover(self) -> dict[int, ClientInfo]:
        """Ask every node who it is (see :meth:`Transport.discover`)."""
        return self.transport.discover()

    @staticmethod
    def able(clients: dict[int, ClientInfo]) -> list[ClientInfo]:
        """The clients that may be sampled (budget not exhausted, available), by client id."""
        return sorted(
            (c for c in clients.values() if not c.exhausted and not c.unavailable),
            key=lambda c: c.client_id,
        )

    def sample(self, clients: dict[int, ClientInfo], round_: int) -> list[int]:
        """This round's clients (node ids) among the :meth:`able` ones, as the strategy draws.

        Without user-level DP: exactly ``clients_per_round`` from ``experiment.seed`` and
        the round (bit-reproducible). With it: from OS entropy, Poisson or fixed
        (:class:`server.strategy.UserLevelDp`).
        """
        return self.strategy.sample(self.able(clients), round_)

    # ------------------------------------------------------------------ the loop
    def execute(self) -> RunOutcome:
        """Run every round; return the summary and the final aggregate."""
        t_start, started_at = time.perf_counter(), utc_now()
        clients = self.discover()
        # The clients' example counts are their aggregation weights: a headroom they could
        # overflow is refused before anyone trains (e.g. Paillier's max_total_weight).
        problems = weight_problems(self.cfg, [c.num_train for c in clients.values()])
        if problems:
            raise ConfigError(problems)
        first = next(iter(clients.values()))
        spec = ModelSpec(
            name=self.cfg.model.name,
            input_shape=first.input_shape,
            num_classes=max(c.num_classes for c in clients.values()),
            hidden=self.cfg.model.hidden,
        )
        spec = self.checkpointer.spec(spec)  # a resumed run keeps its model
        # The layout every contribution must carry (seeded: leaves the global RNG alone).
        model = build_model(spec, seed=0)
        self._shapes = [tuple(p.shape) for p in model.state_dict().values()]
        self._layout = layout_of(get_weights(model))  # item sizes are part of the layout
        self.strategy.bind(spec, list(self._shapes), layout=self._layout)
        self.transport.shared[keys.KEY_NUM_CLASSES] = spec.num_classes
        summary = RunSummary(config=self.cfg.to_dict(), started_at=started_at)
        # Before round 1 (a resumed run reuses the checkpoint's): server.statistics.
        restored = self.checkpointer.statistics()
        self.statistics = (
            restored
            if restored is not None
            else gather(self.cfg, self.transport, self.summer, clients)
        )
        self.statistics.attach(self.transport)
        summary.statistics = self.statistics.to_dict()
        current, first_round = self.checkpointer.restore(self, clients, summary, list(self._shapes))
        if first_round == 1:  # the run id is on disk before any client trains
            self._checkpoint(0, current, clients, summary, spec, t_start)
        for round_ in range(first_round, self.cfg.experiment.rounds + 1):
            t0 = time.perf_counter()
            self.transport.refresh(clients)
            self.availability.begin_round(round_, clients)
            population = len(self.able(clients))
            if not population:
                summary.stop_reason = (
                    "no client can train: every client's privacy budget is exhausted"
                )
                logger.warning("stopping before round %d: %s", round_, summary.stop_reason)
                break
            sampled = self.sample(clients, round_)
            record = RoundRecord(
                round=round_,
                accuracy=None,
                loss=None,
                seconds=0.0,
                sampled=[clients[n].client_id for n in sampled],
            )
            if not sampled:  # Poisson client sampling drew nobody
                record.status = "skipped"
                record.reason = "Poisson client sampling drew no client this round"
                logger.info("round %d skipped: %s", round_, record.reason)
            else:
                candidate = self._train_round(clients, sampled, round_, current, record)
                if candidate is not None:
                    accepted = self._evaluate_round(clients, round_, candidate, current, record)
                    if accepted is not None:
                        current = accepted
            if self.cfg.privacy.mode != "none":
                record.privacy = self._privacy_view(record, population=population)
            record.seconds = time.perf_counter() - t0
            for cid, reason in sorted(record.failures.items()):
                logger.warning("round %d: client %s failed: %s", round_, cid, reason)
            if self.metrics is not None:
                self.metrics.observe_round(record)
                self.metrics.observe_transport(
                    bytes_out=self.transport.bytes_out, bytes_in=self.transport.bytes_in
                )
                self.metrics.observe_clients(self.availability.states(clients))
            summary.rounds.append(record)
            self._checkpoint(round_, current, clients, summary, spec, t_start)
            if self.on_round:
                self.on_round(record, self.cfg.experiment.rounds)
        if self.cfg.strategy.evaluate_clients and current.payload is not None:
            summary.final_evaluation = self._evaluate_final(clients, current)
        summary.seconds = time.perf_counter() - t_start + self.checkpointer.seconds_before
        summary.clients = {
            c.client_id: {
                "num_train": c.num_train,
                "num_test": c.num_test,
                "exhausted": c.exhausted,
            }
            for c in clients.values()
        }
        summary.excluded = dict(self.excluded)
        return RunOutcome(
            summary,
            spec,
            current.payload,
            current.weight,
            clients,
            state=current.state,
            run_id=self.checkpointer.run_id,
        )

    def _checkpoint(
        self,
        round_: int,
        current: GlobalModel,
        clients: dict[int, ClientInfo],
        summary: RunSummary,
        spec: ModelSpec,
        t_start: float,
    ) -> None:
        """Save the state after ``round_`` (0: after discovery), if checkpointing is on."""
        self.checkpointer.save(
            self,
            round_=round_,
            current=current,
            clients=clients,
            summary=summary,
            spec=spec,
            shapes=list(self._shapes or []),
            seconds=time.perf_counter() - t_start,
        )

    def _privacy_view(self, record: RoundRecord, *, population: int) -> dict[str, Any]:
        """The coordinator's ledger after a round: every client's cumulative epsilon.

        Under user-level DP the strategy wrapper also accounts the round just run
        (``population`` clients could be drawn) and reports both user-level figures (see
        :class:`~fedai.privacy.client_sampling.UserLevelAccountant`). The ``sampled`` and
        ``trained`` lists stay in the round record: the coordinator knows participation
        anyway, and the sample-level reports (one history entry per round trained) would
        reveal it regardless; so ``results.json`` is the coordinator's record, and its
        holder is the party the participation-known figure is for.
        """
        view: dict[str, Any] = {
            "clients": {cid: dict(r) for cid, r in sorted(self._privacy_reports.items())}
        }
        eps = [r["epsilon"] for r in self._privacy_reports.values()]
        view["max_epsilon"] = max(eps) if eps else 0.0
        view.update(self.strategy.account(record, population=population))
        return view

    def ledger_view(self, client_id: str) -> dict[str, bool | int | float | str]:
        """The coordinator's (checkpointed) view of a client's ledger, for its train message.

        :data:`~fedai.federation.keys.KEY_SEEN_CHARGES`: the rounds of this run it saw the
        client charge (its own count of "trained" replies, or the client's last reported
        ``run_rounds`` if larger); :data:`~fedai.federation.keys.KEY_SEEN_EPSILON`: the
        cumulative epsilon the client last reported. Empty while it has seen neither. The
        node compares them with its ledger and refuses to train from one that holds less
        (:meth:`fedai.privacy.ledger.PrivacyLedger.check_continuity`); the node decides.
        """
        report = self._privacy_reports.get(client_id, {})
        charges = max(self._charges_seen.get(client_id, 0), int(report.get("run_rounds") or 0))
        epsilon = float(report.get("epsilon") or 0.0)
        if not charges and not epsilon:
            return {}
        return {keys.KEY_SEEN_CHARGES: charges, keys.KEY_SEEN_EPSILON: epsilon}

    def _train_round(
        self,
        clients: dict[int, ClientInfo],
        sampled: list[int],
        round_: int,
        current: GlobalModel,
        record: RoundRecord,
    ) -> Candidate | None:
        plan = self.strategy.configure_train(round_, [clients[n] for n in sampled], current)
        for nid, reason in plan.dropped.items():
            record.failures[clients[nid].client_id] = reason
        replies = self.transport.send(
            plan.node_ids,
            keys.MSG_TRAIN,
            round_,
            plan.arrays,
            plan.config,
            per_node={
                nid: {**self.ledger_view(clients[nid].client_id), **plan.per_node.get(nid, {})}
                for nid in plan.node_ids
            },
        )
        self.availability.note(round_, clients, plan.node_ids, replies)
        good: list[tuple[str, Payload, float]] = []
        for nid in plan.node_ids:
            cid = clients[nid].client_id
            try:
                taken = self._take_contribution(clients[nid], replies.get(nid), record)
            except Exception as err:  # one bad reply costs only that client (logged below)
                record.failures[cid] = f"{type(err).__name__}: {err}"
                continue
            if taken is not None:
                good.append((cid, *taken))
        if not plan.node_ids:
            record.trained = []
        if not self._quorum(plan.node_ids, replies, good, record):
            return None
        return self.strategy.aggregate_train(round_, good, record, current)

    def _quorum(
        self,
        node_ids: list[int],
        replies: dict[int, Message],
        good: list[tuple[str, Payload, float]],
        record: RoundRecord,
    ) -> bool:
        """True if enough sampled clients answered in time (``experiment.min_replies``).

        An answer is any reply that is not an error (a refusal counts: the client is
        there). Without a quorum the round fails and the previous model is kept.
        """
        need = min(self.cfg.experiment.min_replies, len(node_ids))
        answered = sum(
            1 for nid in node_ids if (r := replies.get(nid)) is not None and not r.has_error()
        )
        if answered >= need:
            return True
        record.trained = [cid for cid, _, _ in good]
        record.num_examples = sum(n for _, _, n in good)
        record.status = "failed"
        record.reason = (
            f"quorum not reached: {answered} of {len(node_ids)} sampled client(s) answered "
            f"within experiment.round_timeout ({self.transport.timeout:g} s); "
            f"experiment.min_replies is {self.cfg.experiment.min_replies}"
        )
        logger.warning(
            "round %d failed: %s; keeping the previous model", record.round, record.reason
        )
        return False

    def _take_contribution(
        self, client: ClientInfo, reply: Message | None, record: RoundRecord
    ) -> tuple[Payload, float] | None:
        """Validate one train reply; return (payload, weight), or None if it brought none.

        Raises:
            Exception: Anything a malformed reply causes; the caller records it.
        """
        cid = client.client_id
        if reply is None:
            record.failures[cid] = (
                f"no reply within experiment.round_timeout ({self.transport.timeout:g} s)"
            )
            return None
        if reply.has_error():
            record.failures[cid] = reply.error.reason or f"error code {reply.error.code}"
            return None
        rec = self.transport.fedai_record(reply)
        status = str(rec.get(keys.KEY_STATUS, keys.STATUS_OK))
        charged = self._charges_seen.get(cid, 0)
        if status == keys.STATUS_OK and self.cfg.privacy.mode != "none":
            # It says it trained, so its ledger charged this round (counted even if the
            # reply is then left out: the spend is real).
            self._charges_seen[cid] = charged + 1
        if keys.KEY_PRIVACY in rec:
            report = _parse_report(cid, str(rec[keys.KEY_PRIVACY]))
            expected = charged + (status == keys.STATUS_OK)
            drop = _report_drop(report, self._privacy_reports.get(cid), charges=expected)
            if drop:  # never kept, never averaged in: the earlier figures stand
                reason = (
                    f"client {cid}: {drop}: its ledger was lost or replaced; reply left out "
                    "and the client not sampled again in this run"
                )
                client.exhausted = reason
                raise LedgerContinuityError(reason, client_id=cid)
            self._privacy_reports[cid] = report
        if status == keys.STATUS_REFUSED:
            reason = _text(rec.get(keys.KEY_REASON, "refused"))
            record.refused[cid] = reason
            client.exhausted = reason
            logger.info("client %s refused to train: %s", cid, reason)
            return None
        if status != keys.STATUS_OK:
            record.failures[cid] = _text(rec.get(keys.KEY_REASON, status))
            return None
        contribution = reply_payload(reply)
        self.summer.check(contribution, self._layout)
        n = as_float(
            reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES],
            what="num-examples",
            lo=0.0,
            hi=float(client.num_train),
        )
        if not n > 0:
            raise ProtocolError(f"num-examples must be > 0; got {n}")
        return contribution, n

    def _collect_evaluations(
        self,
        clients: dict[int, ClientInfo],
        node_ids: list[int],
        replies: dict[int, Message],
        record: RoundRecord | None,
    ) -> tuple[float, float, float, list[str], dict[str, Message]]:
        """Parse evaluate replies: (loss sum, accuracy sum, examples, rejections, OK replies)."""
        loss_sum, acc_sum, n_sum = 0.0, 0.0, 0.0
        rejected: list[str] = []
        ok: dict[str, Message] = {}
        failures: dict[str, str] = record.failures if record is not None else {}
        for nid in node_ids:
            reply = replies.get(nid)
            cid = clients[nid].client_id
            if reply is None or reply.has_error():
                reason = "no reply" if reply is None else reply.error.reason
                failures.setdefault(cid, f"evaluate: {reason}")
                continue
            try:
                rec = self.transport.fedai_record(reply)
                status = str(rec.get(keys.KEY_STATUS, keys.STATUS_OK))
                if status == keys.STATUS_REJECTED:
                    rejected.append(cid + ": " + _text(rec.get(keys.KEY_REASON, "")))
                    continue
                if status != keys.STATUS_OK:  # refused (its evaluation policy) or failed
                    reason = _text(rec.get(keys.KEY_REASON, status))
                    failures.setdefault(cid, f"evaluate {status}: {reason}")
                    continue
                m = reply.content.metric_records[keys.REC_METRICS]
                n = as_float(
                    m[keys.KEY_NUM_EXAMPLES],
                    what="num-examples",
                    lo=0.0,
                    hi=float(clients[nid].num_test),
                )
                loss = as_float(m[keys.KEY_LOSS], what="loss", lo=0.0)
                acc = as_float(m[keys.KEY_ACCURACY], what="accuracy", lo=0.0, hi=1.0)
            except Exception as err:  # one bad reply costs only that client
                failures.setdefault(cid, f"evaluate: {type(err).__name__}: {err}")
                continue
            loss_sum += loss * n
            acc_sum += acc * n
            n_sum += n
            ok[cid] = reply
        return loss_sum, acc_sum, n_sum, rejected, ok

    def _evaluate_round(
        self,
        clients: dict[int, ClientInfo],
        round_: int,
        candidate: Candidate,
        current: GlobalModel,
        record: RoundRecord,
    ) -> GlobalModel | None:
        """Federated evaluation of the candidate; the next model, or None if rejected."""
        node_ids = self.strategy.evaluators(self.able(clients) or list(clients.values()), round_)
        plan = self.strategy.configure_evaluate(round_, candidate, current, node_ids)
        replies = self.transport.send(
            plan.node_ids,
            keys.MSG_EVALUATE,
            round_,
            plan.arrays,
            plan.config,
            records=plan.records,
        )
        self.availability.note(round_, clients, plan.node_ids, replies)
        loss_sum, acc_sum, n_sum, rejected, ok = self._collect_evaluations(
            clients, plan.node_ids, replies, record
        )
        if not rejected and not ok:  # a node in evaluation 'off' checks, reports 0 rows
            rejected.append("no client evaluated (and so bounds-checked) the aggregate")
        accepted: GlobalModel | None = None
        if not rejected:
            try:
                accepted = self.strategy.accept(round_, candidate, ok)
            except ProtocolError as err:
                rejected.append(f"server step: {err}")
        if rejected:
            record.status = "failed"
            record.reason = (
                "aggregate failed the clients' bounds check; discarded, previous "
                "model kept (" + "; ".join(rejected[:3]) + ")"
            )
            logger.warning("round %d failed: %s", round_, record.reason)
            return None
        if n_sum > 0:
            record.loss, record.accuracy = loss_sum / n_sum, acc_sum / n_sum
        return accepted

    def _evaluate_final(self, clients: dict[int, ClientInfo], model: GlobalModel) -> dict[str, Any]:
        """Every client evaluates the final model once (when rounds evaluated a sample)."""
        if model.payload is None:
            raise ProtocolError("final evaluation needs an accepted model; there is none")
        node_ids = sorted(n for n, c in clients.items() if not c.unavailable)
        round_ = self.cfg.experiment.rounds + 1
        replies = self.transport.send(
            node_ids,
            keys.MSG_EVALUATE,
            round_,
            payload_to_record(model.payload),
            {keys.KEY_TOTAL_WEIGHT: float(model.weight)},
        )
        failures: dict[str, str] = {}
        record = RoundRecord(round=round_, accuracy=None, loss=None, seconds=0.0)
        loss_sum, acc_sum, n_sum, rejected, ok = self._collect_evaluations(
            clients, node_ids, replies, record
        )
        failures.update(record.failures)
        out: dict[str, Any] = {
            "clients": len(ok),
            "num_examples": n_sum,
            "loss": loss_sum / n_sum if n_sum else None,
            "accuracy": acc_sum / n_sum if n_sum else None,
        }
        if rejected or failures:
            out["rejected"] = rejected
            out["failures"] = failures
        logger.info("final evaluation on %d clients: %s", len(ok), out)
        return out


def _report_drop(
    report: dict[str, Any], previous: dict[str, Any] | None, *, charges: int
) -> str | None:
    """Why ``report`` falls below what the coordinator already saw of its client, or None.

    A ledger never loses entries and its epsilon only grows, so a cumulative epsilon
    (beyond :func:`~fedai.privacy.ledger.epsilon_tolerance`) or a round count below the
    previous report (the checkpoint's, after a resume), or fewer charged rounds of this
    run (``run_rounds``) than ``charges`` (the "trained" replies seen, this one included)
    means the client's ledger was lost or replaced: its figures would understate a spend
    that already happened.
    """
    prev = previous or {}
    problems: list[str] = []
    if prev:
        tolerance = epsilon_tolerance(prev["epsilon"], accountant=str(prev.get("accountant")))
        if report["epsilon"] < prev["epsilon"] - tolerance:
            problems.append(
                f"epsilon {report['epsilon']:.4g} below its earlier {prev['epsilon']:.4g}"
            )
        if report["rounds_trained"] < prev.get("rounds_trained", 0):
            problems.append(
                f"{report['rounds_trained']} round(s) trained, below its earlier "
                f"{prev['rounds_trained']}"
            )
    floor = max(charges, int(prev.get("run_rounds") or 0))
    if "run_rounds" in report and report["run_rounds"] < floor:
        problems.append(
            f"{report['run_rounds']} charged round(s) of this run, below the {floor} seen"
        )
    if not problems:
        return None
    return "privacy report fell below the coordinator's view (" + "; ".join(problems) + ")"


_MAX_REPORT_CHARS = 4 << 20  # a history of ~100k rounds
_MAX_HISTORY = 1_000_000


def _parse_report(client_id: str, text: str) -> dict[str, Any]:
    """Parse a client's privacy report (untrusted); a malformed one is a ProtocolError.

    Only the known keys are kept, each checked for type and range: a report with NaN,
    Infinity or an out-of-range number must cost that client its reply, not stop the run
    when the checkpoint or results.json is written (strict JSON refuses them there).
    """
    where = f"client {client_id}: privacy report"

    def bad(what: str) -> ProtocolError:
        return ProtocolError(f"{where} {what}")

    def number(value: object, key: str, hi: float = 1e12) -> float:
        return as_float(value, what=f"{where} {key}", lo=0, hi=hi)

    def count(value: object, key: str, hi: int = _MAX_HISTORY) -> int:
        return as_int(value, what=f"{where} {key}", lo=0, hi=hi)

    def _no_constants(token: str) -> float:
        raise ValueError(f"{token} is not a number")

    if len(text) > _MAX_REPORT_CHARS:
        raise bad(f"must be at most {_MAX_REPORT_CHARS} characters; got {len(text)}")
    try:
        report = json.loads(text, parse_constant=_no_constants)
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        raise bad(f"must be JSON with finite numbers; got {text[:80]!r}") from err
    if not isinstance(report, dict) or "epsilon" not in report:
        raise bad(f"must be a JSON object with an epsilon; got {text[:80]!r}")
    out: dict[str, Any] = {"epsilon": number(report["epsilon"], "epsilon")}
    for key, hi in (("delta", 1), ("noise_multiplier", 1e12), ("budget_epsilon", 1e12)):
        value = report.get(key)
        out[key] = None if value is None else number(value, key, hi)
    for key in ("rounds_trained", "rounds_lost"):
        out[key] = count(report.get(key, 0), key)
    if "run_rounds" in report:  # rounds of this run its ledger charged (clients.privacy)
        out["run_rounds"] = count(report["run_rounds"], "run_rounds")
    accountant = report.get("accountant", "")
    if not isinstance(accountant, str) or len(accountant) > 16:
        raise bad("accountant must be a short string")
    out["accountant"] = accountant
    exhausted = report.get("exhausted", False)
    if not isinstance(exhausted, bool):
        raise bad("exhausted must be true or false")
    out["exhausted"] = exhausted
    history = report.get("history", [])
    if not isinstance(history, list) or len(history) > _MAX_HISTORY:
        raise bad(f"history must be a list of at most {_MAX_HISTORY} events")
    events = []
    for event in history:
        if not isinstance(event, list) or len(event) != 3:
            raise bad("history events must be [noise_multiplier, sample_rate, steps]")
        sigma, rate, steps = event
        events.append(
            [
                number(sigma, "history sigma"),
                number(rate, "history rate", 1),
                count(steps, "history steps", 1 << 40),
            ]
        )
    out["history"] = events
    return out


__all__ = ["ClientInfo", "FederatedRun", "RunOutcome"]
