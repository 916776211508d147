"""The coordinator's round loop.

fedai drives rounds itself instead of calling ``Strategy.start`` because it needs what
that loop cannot give: client identities that survive restarts (for the privacy ledger),
deterministic sampling by client id (same sample under every backend) or, under user-level
DP, secret sampling from OS entropy that its accounting matches, skipping clients
whose privacy budget is spent, ending the run when nobody can train, a global model that
stays encrypted, and discarding a round whose aggregate fails the clients' bounds check.
Aggregation itself is the :class:`~fedai.aggregation.SecureSum` seam: FedAvg in the clear,
or a homomorphic sum.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedai.aggregation import Payload, SecureSum
from fedai.config import ExperimentConfig
from fedai.errors import ContributionError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_float, as_int, payload_to_record, reply_payload
from fedai.models import ModelSpec, build_model
from fedai.privacy.accounting import resolve_user_delta
from fedai.privacy.client_sampling import (
    UserLevelAccountant,
    UserLevelRound,
    fixed_size_sample,
    poisson_sample,
)
from fedai.results import RoundRecord, RunSummary

logger = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord, int], None]

#: Bounds on what a node may announce in discovery (a reply is untrusted input).
MAX_CLIENT_ID_CHARS = 128
MAX_EXAMPLES = 10**9
MAX_CLASSES = 10_000
MAX_INPUT_DIMS = 4
MAX_INPUT_VALUES = 10**7


@dataclass(slots=True)
class ClientInfo:
    """A client as announced in discovery."""

    node_id: int
    client_id: str
    num_train: int
    num_test: int
    input_shape: tuple[int, ...]
    num_classes: int
    exhausted: str = ""  # reason, once the client refused to train for its budget


@dataclass(slots=True)
class RunOutcome:
    """What the loop ends with: the summary and the (possibly encrypted) global aggregate."""

    summary: RunSummary
    spec: ModelSpec
    payload: Payload | None
    total_weight: float
    clients: dict[int, ClientInfo] = field(default_factory=dict)


class FederatedRun:
    """Runs ``cfg.experiment.rounds`` rounds of sample -> train -> sum -> evaluate."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        grid: Grid,
        *,
        summer: SecureSum,
        on_round: RoundCallback | None = None,
        timeout: float = 3600.0,
        discovery_timeout: float = 120.0,
        rng_factory: Callable[[], np.random.Generator] = np.random.default_rng,
    ) -> None:
        self.cfg = cfg
        self.grid = grid
        self.summer = summer
        self.on_round = on_round
        self.timeout = timeout
        self.discovery_timeout = discovery_timeout
        self._config_json = cfg.to_json()
        self._shared: dict[str, bool | int | float | str] = {}
        self._privacy_reports: dict[str, dict[str, Any]] = {}  # latest report per client
        # User-level DP: the sample comes from a fresh generator per round, by default
        # seeded from OS entropy (never experiment.seed); tests inject seeded ones.
        self._rng_factory = rng_factory
        self._user_accountant: UserLevelAccountant | None = None
        sampling = cfg.privacy.user_client_sampling
        if sampling is not None:
            e = cfg.experiment
            self._user_accountant = UserLevelAccountant(
                client_sampling=sampling,
                delta=resolve_user_delta(cfg.privacy.delta, population=e.num_clients),
                population=e.num_clients,
                clients_per_round=e.clients_per_round,
                coordinator_sees_updates=cfg.secure_aggregation.scheme == "none",
            )
        self._shapes: list[tuple[int, ...]] | None = None  # the model's layout, once known
        self.excluded: dict[str, str] = {}  # "node <id>" -> why discovery left it out

    # ------------------------------------------------------------------ messaging
    def _send(
        self,
        node_ids: list[int],
        message_type: str,
        round_: int,
        arrays: ArrayRecord,
        config: dict[str, bool | int | float | str],
    ) -> dict[int, Message]:
        base: dict[str, Any] = {
            keys.KEY_SERVER_ROUND: round_,
            keys.KEY_EXPERIMENT: self._config_json,
            **self._shared,
            **config,
        }
        messages = [
            Message(
                RecordDict({keys.REC_ARRAYS: arrays, keys.REC_CONFIG: ConfigRecord(dict(base))}),
                dst_node_id=nid,
                message_type=message_type,
                group_id=str(round_),
            )
            for nid in node_ids
        ]
        by_mid: dict[int, Message] = {}
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        sent = {m.metadata.dst_node_id for m in messages}
        for reply in replies:
            src = reply.metadata.src_node_id
            if src in sent:
                by_mid[src] = reply
            else:  # error replies from the SuperLink carry its id; map via reply_to
                for m in messages:
                    if m.metadata.message_id == reply.metadata.reply_to_message_id:
                        by_mid[m.metadata.dst_node_id] = reply
        return by_mid

    @staticmethod
    def _fedai(reply: Message) -> ConfigRecord:
        return reply.content.config_records.get(keys.REC_FEDAI, ConfigRecord())

    # ------------------------------------------------------------------ discovery
    def discover(self) -> dict[int, ClientInfo]:
        """Ask every node who it is; wait (bounded) for ``num_clients`` nodes."""
        want = self.cfg.experiment.num_clients
        deadline = time.monotonic() + self.discovery_timeout
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < want and time.monotonic() < deadline:
            logger.info("waiting for clients: %d of %d connected", len(node_ids), want)
            time.sleep(1.0)
            node_ids = sorted(self.grid.get_node_ids())
        if len(node_ids) < want:
            raise ProtocolError(
                f"experiment.num_clients is {want} but only {len(node_ids)} "
                f"node(s) connected within {self.discovery_timeout:g} s"
            )
        clients = self._agree(self._hello(node_ids))
        if not clients:
            raise ProtocolError("no client answered discovery; every node failed (see log)")
        return clients

    def _agree(self, clients: dict[int, ClientInfo]) -> dict[int, ClientInfo]:
        """Keep the nodes that agree: one node per client id, the most common input shape.

        One node's bad answer costs only that node: a duplicate client id keeps the node
        that announced it first (lowest node id); a node whose input shape differs from
        the majority's is left out, named in the log and in ``excluded``.
        """
        kept: dict[int, ClientInfo] = {}
        seen: dict[str, int] = {}
        for nid in sorted(clients):
            info = clients[nid]
            if info.client_id in seen:
                self._exclude(
                    nid,
                    info.client_id,
                    f"client id {info.client_id!r} already announced by node "
                    f"{seen[info.client_id]}",
                )
                continue
            seen[info.client_id] = nid
            kept[nid] = info
        counts = Counter(c.input_shape for c in kept.values())
        if len(counts) > 1:
            # Most common shape; ties go to the shape of the lowest node id.
            order = {c.input_shape: nid for nid, c in sorted(kept.items(), reverse=True)}
            shape = max(counts, key=lambda s: (counts[s], -order[s]))
            for nid, info in list(kept.items()):
                if info.input_shape != shape:
                    self._exclude(
                        nid,
                        info.client_id,
                        f"input shape {_shape_text(info.input_shape)} differs from the "
                        f"{counts[shape]} node(s) with {_shape_text(shape)}",
                    )
                    del kept[nid]
        return kept

    def _exclude(self, nid: int, client_id: str, reason: str) -> None:
        logger.warning("node %s (client %s) left out: %s", nid, client_id, reason)
        self.excluded[f"node {nid}"] = f"client {client_id!r}: {reason}"

    def _hello(self, node_ids: list[int]) -> dict[int, ClientInfo]:
        """Ask ``node_ids`` who they are; nodes that fail or answer garbage are left out."""
        replies = self._send(node_ids, keys.MSG_QUERY, 0, ArrayRecord(), {})
        clients: dict[int, ClientInfo] = {}
        for nid in node_ids:
            reply = replies.get(nid)
            if reply is None or reply.has_error():
                reason = reply.error.reason if reply is not None else "no reply"
                logger.warning("node %s failed discovery: %s", nid, reason)
                continue
            try:
                clients[nid] = _parse_hello(nid, self._fedai(reply))
            except Exception as err:  # any bad reply costs only that node
                logger.warning(
                    "node %s answered discovery with a bad reply: %s: %s",
                    nid,
                    type(err).__name__,
                    err,
                )
                self.excluded[f"node {nid}"] = f"bad discovery reply: {type(err).__name__}: {err}"
        return clients

    def refresh(self, clients: dict[int, ClientInfo]) -> None:
        """Re-identify nodes that (re)connected since discovery, in place.

        A restarted agent comes back under a new Flower node id; its stable client id maps
        it to its old entry (keeping, e.g., its exhausted mark). A node whose client id is
        new joins the federation if its data has the same shape.
        """
        current = set(self.grid.get_node_ids())
        new = sorted(current - set(clients))
        if not new:
            return
        by_client = {c.client_id: nid for nid, c in clients.items()}
        shape = next(iter(clients.values())).input_shape
        for nid, info in self._hello(new).items():
            old = by_client.get(info.client_id)
            if old is not None:
                info.exhausted = clients.pop(old).exhausted
                logger.info("client %s reconnected as node %s (was %s)", info.client_id, nid, old)
            elif info.input_shape != shape:
                logger.warning(
                    "node %s (client %s) has input shape %s, not %s; ignored",
                    nid,
                    info.client_id,
                    info.input_shape,
                    shape,
                )
                continue
            else:
                logger.info("client %s joined as node %s", info.client_id, nid)
            clients[nid] = info

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def able(clients: dict[int, ClientInfo]) -> list[ClientInfo]:
        """The clients that may be sampled (budget not exhausted), by client id."""
        return sorted((c for c in clients.values() if not c.exhausted), key=lambda c: c.client_id)

    def sample(self, clients: dict[int, ClientInfo], round_: int) -> list[int]:
        """Pick this round's clients (node ids) among the :meth:`able` ones.

        Without user-level DP: exactly ``clients_per_round``, deterministically from
        ``experiment.seed`` and the round, by client id (the same sample under every
        backend; non-DP runs are bit-reproducible). With user-level DP the accounting
        assumes nobody can recompute the sample, so it is drawn from
        ``self._rng_factory()`` (a fresh OS-entropy generator) as
        ``privacy.client_sampling`` says: ``poisson`` (each client joins with probability
        ``clients_per_round / num_clients``; possibly nobody) or ``fixed``.
        """
        able = self.able(clients)
        e = self.cfg.experiment
        sampling = self.cfg.privacy.user_client_sampling
        picked: list[int]
        if sampling == "poisson":
            q = e.clients_per_round / e.num_clients
            picked = poisson_sample(len(able), sample_rate=q, rng=self._rng_factory())
        elif sampling == "fixed":
            size = e.clients_per_round
            picked = fixed_size_sample(len(able), sample_size=size, rng=self._rng_factory())
        else:
            k = min(e.clients_per_round, len(able))
            rng = np.random.default_rng([e.seed, round_])
            chosen = rng.choice(len(able), size=k, replace=False) if k < len(able) else range(k)
            picked = sorted(int(j) for j in chosen)
        return [able[i].node_id for i in picked]

    # ------------------------------------------------------------------ the loop
    def execute(self) -> RunOutcome:
        """Run every round; return the summary and the final aggregate."""
        t_start = time.perf_counter()
        clients = self.discover()
        first = next(iter(clients.values()))
        spec = ModelSpec(
            name=self.cfg.model.name,
            input_shape=first.input_shape,
            num_classes=max(c.num_classes for c in clients.values()),
            hidden=self.cfg.model.hidden,
        )
        # The layout every contribution must carry (seeded: leaves the global RNG alone).
        model = build_model(spec, seed=0)
        self._shapes = [tuple(p.shape) for p in model.state_dict().values()]
        self._shared[keys.KEY_NUM_CLASSES] = spec.num_classes
        summary = RunSummary(config=self.cfg.to_dict())
        payload: Payload | None = None
        total_weight = 0.0
        for round_ in range(1, self.cfg.experiment.rounds + 1):
            t0 = time.perf_counter()
            self.refresh(clients)
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
                new = self._train_round(clients, sampled, round_, payload, total_weight, record)
                if new is not None:
                    cand_payload, cand_weight = new
                    accepted = self._evaluate_round(
                        clients, round_, cand_payload, cand_weight, record
                    )
                    if accepted:
                        payload, total_weight = cand_payload, cand_weight
            if self.cfg.privacy.mode != "none":
                record.privacy = self._privacy_view(record, population=population)
            record.seconds = time.perf_counter() - t0
            summary.rounds.append(record)
            if self.on_round:
                self.on_round(record, self.cfg.experiment.rounds)
        summary.seconds = time.perf_counter() - t_start
        summary.clients = {
            c.client_id: {
                "num_train": c.num_train,
                "num_test": c.num_test,
                "exhausted": c.exhausted,
            }
            for c in clients.values()
        }
        summary.excluded = dict(self.excluded)
        return RunOutcome(summary, spec, payload, total_weight, clients)

    def _privacy_view(self, record: RoundRecord, *, population: int) -> dict[str, Any]:
        """The coordinator's ledger after a round: every client's cumulative epsilon.

        Under user-level DP it also accounts the round just run (``population`` clients
        could be drawn) and reports both user-level figures (see
        :class:`~fedai.privacy.client_sampling.UserLevelAccountant`). The ``sampled`` and
        ``trained`` lists stay in the round record: the coordinator knows participation
        anyway, and the sample-level reports (one history entry per round trained) would
        reveal it regardless; so ``results.json`` is the coordinator's record, and its
        holder is the party the participation-known figure is for.
        """
        p = self.cfg.privacy
        view: dict[str, Any] = {
            "clients": {cid: dict(r) for cid, r in sorted(self._privacy_reports.items())}
        }
        eps = [r["epsilon"] for r in self._privacy_reports.values()]
        view["max_epsilon"] = max(eps) if eps else 0.0
        accountant, sampling = self._user_accountant, p.user_client_sampling
        if accountant is not None and sampling is not None:
            e = self.cfg.experiment
            accountant.compose(
                UserLevelRound.observed(
                    round=record.round,
                    client_sampling=sampling,
                    noise_multiplier=p.user_noise_multiplier,
                    sample_rate=e.clients_per_round / e.num_clients,
                    population=population,
                    sampled=len(record.sampled),
                    contributed=len(record.trained),
                ),
                participants=record.trained,
            )
            view["user_level"] = accountant.report()
            user = view["user_level"]
            logger.info(
                "round %d user-level epsilon %.3f against outsiders (%s sampling), %.3f "
                "with participation known (delta %g, sigma %.3f, C %g)",
                record.round,
                user["epsilon"],
                sampling,
                user["participation_known"]["epsilon"],
                accountant.delta,
                p.user_noise_multiplier,
                p.user_clipping_norm,
            )
        return view

    def _train_round(
        self,
        clients: dict[int, ClientInfo],
        sampled: list[int],
        round_: int,
        payload: Payload | None,
        total_weight: float,
        record: RoundRecord,
    ) -> tuple[Payload, float] | None:
        init = payload is None
        arrays = ArrayRecord() if payload is None else payload_to_record(payload)
        replies = self._send(
            sampled,
            keys.MSG_TRAIN,
            round_,
            arrays,
            {
                keys.KEY_INIT: init,
                keys.KEY_TOTAL_WEIGHT: float(total_weight),
                keys.KEY_NUM_SAMPLED: len(sampled),
            },
        )
        good: list[tuple[str, Payload, float]] = []
        for nid in sampled:
            cid = clients[nid].client_id
            try:
                taken = self._take_contribution(clients[nid], replies.get(nid), record)
            except Exception as err:  # one bad reply costs only that client
                reason = f"{type(err).__name__}: {err}"
                record.failures[cid] = reason
                logger.warning(
                    "round %d: contribution of client %s rejected: %s", round_, cid, reason
                )
                continue
            if taken is not None:
                good.append((cid, *taken))
        return self._sum(good, round_, record)

    def _take_contribution(
        self, client: ClientInfo, reply: Message | None, record: RoundRecord
    ) -> tuple[Payload, float] | None:
        """Validate one train reply; return (payload, weight), or None if it brought none.

        Raises:
            Exception: Anything a malformed reply causes; the caller records it.
        """
        cid = client.client_id
        if reply is None:
            record.failures[cid] = "no reply before the timeout"
            return None
        if reply.has_error():
            record.failures[cid] = reply.error.reason or f"error code {reply.error.code}"
            return None
        rec = self._fedai(reply)
        status = str(rec.get(keys.KEY_STATUS, keys.STATUS_OK))
        if keys.KEY_PRIVACY in rec:
            self._privacy_reports[cid] = _parse_report(cid, str(rec[keys.KEY_PRIVACY]))
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
        self.summer.check(contribution, self._shapes)
        n = as_float(
            reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES],
            what="num-examples",
            lo=0.0,
            hi=float(client.num_train),
        )
        if not n > 0:
            raise ProtocolError(f"num-examples must be > 0; got {n}")
        return contribution, n

    def _sum(
        self, good: list[tuple[str, Payload, float]], round_: int, record: RoundRecord
    ) -> tuple[Payload, float] | None:
        """Sum the usable contributions, leaving out any that the sum itself rejects."""
        minimum = self.cfg.secure_aggregation.min_contributors
        summed: Payload | None = None
        while len(good) >= minimum and summed is None:
            try:
                summed = self.summer.sum([p for _, p, _ in good])
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
            )
            logger.warning("round %d failed: %s; keeping the previous model", round_, record.reason)
            return None
        return summed, weight

    def _evaluate_round(
        self,
        clients: dict[int, ClientInfo],
        round_: int,
        payload: Payload,
        total_weight: float,
        record: RoundRecord,
    ) -> bool:
        """Federated evaluation of the candidate aggregate; False if clients reject it."""
        node_ids = sorted(clients)
        replies = self._send(
            node_ids,
            keys.MSG_EVALUATE,
            round_,
            payload_to_record(payload),
            {keys.KEY_TOTAL_WEIGHT: float(total_weight)},
        )
        loss_sum, acc_sum, n_sum = 0.0, 0.0, 0.0
        rejected: list[str] = []
        for nid in node_ids:
            reply = replies.get(nid)
            cid = clients[nid].client_id
            if reply is None or reply.has_error():
                reason = "no reply" if reply is None else reply.error.reason
                record.failures.setdefault(cid, f"evaluate: {reason}")
                continue
            try:
                rec = self._fedai(reply)
                if str(rec.get(keys.KEY_STATUS, keys.STATUS_OK)) == keys.STATUS_REJECTED:
                    rejected.append(cid + ": " + _text(rec.get(keys.KEY_REASON, "")))
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
                record.failures.setdefault(cid, f"evaluate: {type(err).__name__}: {err}")
                continue
            loss_sum += loss * n
            acc_sum += acc * n
            n_sum += n
        if not rejected and n_sum == 0:
            rejected.append("no client evaluated (and so bounds-checked) the aggregate")
        if rejected:
            record.status = "failed"
            record.reason = (
                "aggregate failed the clients' bounds check; discarded, previous "
                "model kept (" + "; ".join(rejected[:3]) + ")"
            )
            logger.warning("round %d failed: %s", round_, record.reason)
            return False
        if n_sum > 0:
            record.loss, record.accuracy = loss_sum / n_sum, acc_sum / n_sum
        return True


def _parse_report(client_id: str, text: str) -> dict[str, Any]:
    """Parse a client's privacy report; a malformed one is a ProtocolError."""
    try:
        report = json.loads(text)
        eps = float(report["epsilon"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(
            f"client {client_id}: privacy report must be JSON with an epsilon; got {text[:80]!r}"
        ) from err
    if not (math.isfinite(eps) and eps >= 0):
        raise ProtocolError(f"client {client_id}: privacy report epsilon must be >= 0; got {eps}")
    return dict(report)


def _parse_hello(nid: int, rec: ConfigRecord) -> ClientInfo:
    """Parse and range-check a discovery reply.

    Raises:
        ProtocolError: A field is missing, of the wrong type or out of range.
    """
    for key in (
        keys.KEY_CLIENT_ID,
        keys.KEY_NUM_TRAIN,
        keys.KEY_NUM_TEST,
        keys.KEY_INPUT_SHAPE,
        keys.KEY_NUM_CLASSES,
    ):
        if key not in rec:
            raise ProtocolError(f"discovery reply must carry {key!r}; it does not")
    client_id = rec[keys.KEY_CLIENT_ID]
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS:
        raise ProtocolError(
            f"client id must be a string of 1..{MAX_CLIENT_ID_CHARS} characters; got "
            f"{type(client_id).__name__} of length {len(str(client_id))}"
        )
    text = rec[keys.KEY_INPUT_SHAPE]
    parts = str(text).split("x")
    if not isinstance(text, str) or not 0 < len(parts) <= MAX_INPUT_DIMS:
        raise ProtocolError(
            f"input shape must be 1..{MAX_INPUT_DIMS} dims like '8x8'; got {str(text)[:40]!r}"
        )
    shape = tuple(as_int(d, what="input shape dim", lo=1, hi=MAX_INPUT_VALUES) for d in parts)
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise ProtocolError(
            f"input shape must have <= {MAX_INPUT_VALUES} values; got {_shape_text(shape)}"
        )
    return ClientInfo(
        nid,
        client_id,
        as_int(rec[keys.KEY_NUM_TRAIN], what="num-train", lo=1, hi=MAX_EXAMPLES),
        as_int(rec[keys.KEY_NUM_TEST], what="num-test", lo=0, hi=MAX_EXAMPLES),
        shape,
        as_int(rec[keys.KEY_NUM_CLASSES], what="num-classes", lo=2, hi=MAX_CLASSES),
    )


def _text(value: object, limit: int = 300) -> str:
    """A client-supplied reason, cut to ``limit`` characters for logs and results."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


__all__ = ["ClientInfo", "FederatedRun", "RunOutcome"]
