"""The coordinator's round loop.

fedai drives rounds itself instead of calling ``Strategy.start`` because it needs what
that loop cannot give: client identities that survive restarts (for the privacy ledger),
deterministic sampling by client id (same sample under every backend), skipping clients
whose privacy budget is spent, ending the run when nobody can train, a global model that
stays encrypted, and discarding a round whose aggregate fails the clients' bounds check.
Aggregation itself is the :class:`~fedai.aggregation.SecureSum` seam: FedAvg in the clear,
or a homomorphic sum.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedai.aggregation import Payload, SecureSum
from fedai.config import ExperimentConfig
from fedai.errors import CorruptPayloadError, FedAIError, KeyMismatchError, ProtocolError
from fedai.federation import keys
from fedai.federation.records import as_float, as_int, payload_to_record, reply_payload
from fedai.models import ModelSpec
from fedai.privacy.accounting import DEFAULT_DELTA
from fedai.privacy.user_level import effective_noise_multiplier, user_level_epsilon_of_rounds
from fedai.results import RoundRecord, RunSummary

logger = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord, int], None]


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
        self._user_sigmas: list[float] = []  # sigma each round's sum carried (local+user)

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
        clients = self._hello(node_ids)
        if not clients:
            raise ProtocolError("no client answered discovery; every node failed (see log)")
        shapes = {c.input_shape for c in clients.values()}
        if len(shapes) != 1:
            raise ProtocolError(f"clients must agree on the input shape; got {sorted(shapes)}")
        ids = [c.client_id for c in clients.values()]
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"client ids must be unique; got {sorted(ids)}")
        return clients

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
            rec = self._fedai(reply)
            try:
                shape = tuple(
                    as_int(s, what="input shape") for s in str(rec[keys.KEY_INPUT_SHAPE]).split("x")
                )
                clients[nid] = ClientInfo(
                    nid,
                    str(rec[keys.KEY_CLIENT_ID]),
                    as_int(rec[keys.KEY_NUM_TRAIN], what="num-train"),
                    as_int(rec[keys.KEY_NUM_TEST], what="num-test"),
                    shape,
                    as_int(rec[keys.KEY_NUM_CLASSES], what="num-classes"),
                )
            except (ProtocolError, KeyError) as err:
                logger.warning("node %s answered discovery with a bad reply: %s", nid, err)
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
    def sample(self, clients: dict[int, ClientInfo], round_: int) -> list[int]:
        """Pick this round's clients deterministically from the seed, by client id."""
        able = sorted((c for c in clients.values() if not c.exhausted), key=lambda c: c.client_id)
        k = min(self.cfg.experiment.clients_per_round, len(able))
        rng = np.random.default_rng([self.cfg.experiment.seed, round_])
        picked = rng.choice(len(able), size=k, replace=False) if k < len(able) else range(k)
        return [able[i].node_id for i in sorted(int(j) for j in picked)]

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
        self._shared[keys.KEY_NUM_CLASSES] = spec.num_classes
        summary = RunSummary(config=self.cfg.to_dict())
        payload: Payload | None = None
        total_weight = 0.0
        for round_ in range(1, self.cfg.experiment.rounds + 1):
            t0 = time.perf_counter()
            self.refresh(clients)
            sampled = self.sample(clients, round_)
            if not sampled:
                summary.stop_reason = (
                    "no client can train: every client's privacy budget is exhausted"
                )
                logger.warning("stopping before round %d: %s", round_, summary.stop_reason)
                break
            record = RoundRecord(
                round=round_,
                accuracy=None,
                loss=None,
                seconds=0.0,
                sampled=[clients[n].client_id for n in sampled],
            )
            new = self._train_round(clients, sampled, round_, payload, total_weight, record)
            if new is not None:
                cand_payload, cand_weight = new
                accepted = self._evaluate_round(clients, round_, cand_payload, cand_weight, record)
                if accepted:
                    payload, total_weight = cand_payload, cand_weight
            if self.cfg.privacy.mode != "none":
                record.privacy = self._privacy_view(record)
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
        return RunOutcome(summary, spec, payload, total_weight, clients)

    def _privacy_view(self, record: RoundRecord) -> dict[str, Any]:
        """The coordinator's ledger after a round: every client's cumulative epsilon."""
        p = self.cfg.privacy
        view: dict[str, Any] = {
            "clients": {cid: dict(r) for cid, r in sorted(self._privacy_reports.items())}
        }
        eps = [r["epsilon"] for r in self._privacy_reports.values()]
        view["max_epsilon"] = max(eps) if eps else 0.0
        if p.mode == "local+user" and record.trained:
            self._user_sigmas.append(
                effective_noise_multiplier(
                    noise_multiplier=p.user_noise_multiplier,
                    expected_clients=len(record.sampled),
                    actual_clients=len(record.trained),
                )
            )
        if p.mode == "local+user":
            delta = p.delta if p.delta is not None else DEFAULT_DELTA
            view["user_level"] = {
                "epsilon": user_level_epsilon_of_rounds(
                    population=self.cfg.experiment.num_clients,
                    clients_per_round=self.cfg.experiment.clients_per_round,
                    noise_multipliers=self._user_sigmas,
                    delta=delta,
                    accountant="rdp",
                ),
                "delta": delta,
                "accountant": "rdp",
                "noise_multipliers": list(self._user_sigmas),
                "sample_rate": self.cfg.experiment.clients_per_round
                / self.cfg.experiment.num_clients,
            }
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
        good: list[Payload] = []
        weight = 0.0
        for nid in sampled:
            cid = clients[nid].client_id
            reply = replies.get(nid)
            if reply is None:
                record.failures[cid] = "no reply before the timeout"
                continue
            if reply.has_error():
                record.failures[cid] = reply.error.reason or f"error code {reply.error.code}"
                continue
            rec = self._fedai(reply)
            status = str(rec.get(keys.KEY_STATUS, keys.STATUS_OK))
            if keys.KEY_PRIVACY in rec:
                try:
                    self._privacy_reports[cid] = _parse_report(cid, str(rec[keys.KEY_PRIVACY]))
                except ProtocolError as err:
                    record.failures[cid] = str(err)
                    continue
            if status == keys.STATUS_REFUSED:
                reason = str(rec.get(keys.KEY_REASON, "refused"))
                record.refused[cid] = reason
                clients[nid].exhausted = reason
                logger.info("client %s refused to train: %s", cid, reason)
                continue
            if status != keys.STATUS_OK:
                record.failures[cid] = str(rec.get(keys.KEY_REASON, status))
                continue
            try:
                contribution = reply_payload(reply)
                self.summer.check(contribution)
                n = as_float(
                    reply.content.metric_records[keys.REC_METRICS][keys.KEY_NUM_EXAMPLES],
                    what="num-examples",
                )
                if not n > 0:
                    raise ProtocolError(f"num-examples must be > 0; got {n}")
            except (FedAIError, KeyError, TypeError) as err:
                reason = f"{type(err).__name__}: {err}"
                record.failures[cid] = reason
                logger.warning(
                    "round %d: contribution of client %s rejected: %s", round_, cid, reason
                )
                continue
            good.append(contribution)
            weight += n
            record.trained.append(cid)
        record.num_examples = weight
        minimum = self.cfg.secure_aggregation.min_contributors
        if len(good) < minimum:
            record.status = "failed"
            record.reason = (
                f"{len(good)} usable contribution(s); at least {minimum} needed "
                "(secure_aggregation.min_contributors)"
            )
            logger.warning("round %d failed: %s; keeping the previous model", round_, record.reason)
            return None
        try:
            summed = self.summer.sum(good)
        except (CorruptPayloadError, KeyMismatchError) as err:
            record.status, record.reason = "failed", f"sum failed: {err}"
            logger.warning("round %d failed: %s; keeping the previous model", round_, err)
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
            rec = self._fedai(reply)
            if str(rec.get(keys.KEY_STATUS, keys.STATUS_OK)) == keys.STATUS_REJECTED:
                rejected.append(cid + ": " + str(rec.get(keys.KEY_REASON, "")))
                continue
            try:
                m = reply.content.metric_records[keys.REC_METRICS]
                n = as_float(m[keys.KEY_NUM_EXAMPLES], what="num-examples")
                loss = as_float(m[keys.KEY_LOSS], what="loss")
                acc = as_float(m[keys.KEY_ACCURACY], what="accuracy")
            except (ProtocolError, KeyError) as err:
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
        float(report["epsilon"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ProtocolError(
            f"client {client_id}: privacy report must be JSON with an epsilon; got {text[:80]!r}"
        ) from err
    return dict(report)


__all__ = ["ClientInfo", "FederatedRun", "RunOutcome"]
