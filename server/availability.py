"""Which clients the coordinator may sample: drop-outs, unavailable nodes and their return.

The round loop (:mod:`server.rounds`) asks :class:`Availability` twice per round:

* :meth:`Availability.begin_round`, before sampling: clients whose node is no longer
  listed by the SuperLink are marked unavailable; answers to earlier probes are
  collected (a client whose node answered is sampled again; a node that failed
  discovery and now answers joins); and every ``experiment.retry_unavailable_every``
  rounds the unavailable nodes that are listed get a new probe.
* :meth:`Availability.note`, after each exchange (train, evaluate): a client that sent
  no reply before the deadline, or whose node produced a transport error (Flower's
  NODE_UNAVAILABLE, MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE), missed the round; a
  client that answered anything (even an error raised by its ClientApp, or a refusal) is
  alive and its count starts again. ``experiment.max_missed_rounds`` misses in a row mark
  it unavailable.

How a node comes back: a probe is a discovery hello pushed without waiting
(:meth:`server.transport.Transport.probe`); its answer is picked up at the start of a
later round without waiting either, so probing a dead node costs no round any time. A
node that reconnects under a new node id (an agent restarted without node
authentication) is re-identified at once by :meth:`Transport.refresh` from its client id.
If every client that could train is unavailable, all marks are cleared: sampling them
again costs at most one deadline, skipping the round would cost the round.
"""

from __future__ import annotations

import logging

from flwr.app import Message

from fedai.config import ExperimentSection
from server.transport import ClientInfo, Transport, clip_text, parse_hello

logger = logging.getLogger(__name__)

# Flower's ErrorCode values that mean the node, not its ClientApp, failed to answer
# (flwr.common.constant.ErrorCode: MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE,
# NODE_UNAVAILABLE).
TRANSPORT_ERROR_CODES = frozenset({3, 4, 5})


def missed(reply: Message | None) -> bool:
    """True if ``reply`` shows the node did not answer: none, or a transport error."""
    return reply is None or (reply.has_error() and reply.error.code in TRANSPORT_ERROR_CODES)


class Availability:
    """Marks clients unavailable after missed rounds and brings them back when they answer.

    Args:
        transport: The coordinator's transport (node listing, probes).
        experiment: ``max_missed_rounds`` and ``retry_unavailable_every`` come from here.
    """

    def __init__(self, transport: Transport, experiment: ExperimentSection) -> None:
        self.transport = transport
        self.max_missed = experiment.max_missed_rounds
        self.retry_every = experiment.retry_unavailable_every
        self._pending: dict[str, int] = {}  # probe message id -> node id
        self._probed: dict[int, int] = {}  # node id -> round of its last probe
        self._counted: dict[int, int] = {}  # node id -> last round a miss was counted
        self._unlisted: set[int] = set()  # marked because the SuperLink stopped listing them

    # ------------------------------------------------------------------ round start
    def begin_round(self, round_: int, clients: dict[int, ClientInfo]) -> None:
        """Update marks before sampling round ``round_`` (see the module doc)."""
        listed = set(self.transport.grid.get_node_ids())
        for nid, client in clients.items():
            if nid not in listed and not client.unavailable:
                self._mark(client, round_, "node not connected (no longer listed by the SuperLink)")
                self._unlisted.add(nid)
        self._collect(round_, clients)
        self._probe_due(round_, clients, listed)
        trainable = [c for c in clients.values() if not c.exhausted]
        if trainable and all(c.unavailable for c in trainable):
            logger.warning(
                "round %d: every client that can train is marked unavailable; sampling them again",
                round_,
            )
            for client in trainable:
                client.unavailable, client.missed = "", 0

    def _collect(self, round_: int, clients: dict[int, ClientInfo]) -> None:
        """Take the answers to earlier probes (never waits)."""
        answers = self.transport.probe_replies(self._pending)
        if not answers:
            return
        self._pending = {m: n for m, n in self._pending.items() if n not in answers}
        joining: dict[int, ClientInfo] = {}
        for nid, reply in sorted(answers.items()):
            if reply.has_error():
                logger.info(
                    "node %s still unavailable: %s", nid, clip_text(reply.error.reason, 120)
                )
                continue
            try:
                info = parse_hello(nid, self.transport.fedai_record(reply))
            except Exception as err:  # a bad answer keeps the node out
                logger.warning(
                    "node %s answered a probe with a bad reply: %s: %s",
                    nid,
                    type(err).__name__,
                    err,
                )
                continue
            known = clients.get(nid)
            if known is not None and known.client_id == info.client_id:
                if known.unavailable:
                    logger.info(
                        "round %d: client %s (node %s) answered again; it is sampled again",
                        round_,
                        known.client_id,
                        nid,
                    )
                known.unavailable, known.missed = "", 0
            else:
                joining[nid] = info
        if joining:
            self.transport.admit(clients, joining)

    def _probe_due(self, round_: int, clients: dict[int, ClientInfo], listed: set[int]) -> None:
        """Probe listed nodes that are out (unavailable, unreachable, left out), when due."""
        out = {nid for nid, c in clients.items() if c.unavailable}
        out |= set(self.transport.unreachable)
        out |= {nid for nid in listed if f"node {nid}" in self.transport.excluded}
        outstanding = set(self._pending.values())
        due = sorted(
            nid
            for nid in out & listed
            if nid not in outstanding
            and (
                nid in self._unlisted  # listed again: ask at once
                or round_ - self._probed.get(nid, round_) >= self.retry_every
            )
        )
        self._probed = {n: r for n, r in self._probed.items() if n in out}
        self._unlisted &= out
        for nid in out:  # the clock starts when a node first goes out
            self._probed.setdefault(nid, round_)
        if due:
            logger.info("round %d: probing unavailable node(s) %s", round_, due)
            self._pending.update(self.transport.probe(due))
            for nid in due:
                self._probed[nid] = round_
            self._unlisted -= set(due)

    # ------------------------------------------------------------------ after exchanges
    def note(
        self,
        round_: int,
        clients: dict[int, ClientInfo],
        node_ids: list[int],
        replies: dict[int, Message],
    ) -> None:
        """Count misses of one exchange; mark clients that missed too many rounds in a row."""
        for nid in node_ids:
            client = clients.get(nid)
            if client is None:
                continue
            if not missed(replies.get(nid)):
                client.missed = 0
                self._counted.pop(nid, None)
                continue
            if self._counted.get(nid) == round_:
                continue  # one miss per round, however many exchanges it missed
            self._counted[nid] = round_
            client.missed += 1
            if self.max_missed and client.missed >= self.max_missed and not client.unavailable:
                self._mark(client, round_, f"missed {client.missed} round(s) in a row")

    def _mark(self, client: ClientInfo, round_: int, reason: str) -> None:
        client.unavailable = reason
        self._probed[client.node_id] = round_  # the probe clock starts now
        logger.warning(
            "round %d: client %s (node %s) marked unavailable: %s; not sampled until it "
            "answers a probe (every %d round(s))",
            round_,
            client.client_id,
            client.node_id,
            reason,
            self.retry_every,
        )

    def states(self, clients: dict[int, ClientInfo]) -> dict[str, int]:
        """How many clients are available, unavailable and exhausted (for metrics)."""
        out = {"available": 0, "unavailable": 0, "exhausted": 0}
        for c in clients.values():
            key = "exhausted" if c.exhausted else "unavailable" if c.unavailable else "available"
            out[key] += 1
        return out


__all__ = ["TRANSPORT_ERROR_CODES", "Availability", "missed"]
