"""Transport and discovery: the coordinator's side of Flower's Message API.

:class:`Transport` sends one message per node and maps every reply (including the
SuperLink's error replies) back to its node; it discovers the federation (who each node
is, bounded waits, one node per client id, the majority input shape) and re-identifies
nodes that reconnect. It knows nothing of strategies, privacy or aggregation: those live
in :mod:`server.strategy` and the round loop in :mod:`server.rounds`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedai.errors import ProtocolError
from fedai.federation import keys
from fedai.federation.polling import send_and_receive
from fedai.federation.records import as_int

logger = logging.getLogger(__name__)

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
    unavailable: str = ""  # reason, while the node is marked unavailable (server.availability)
    missed: int = 0  # rounds missed in a row (no reply / node error)
    standardizes: bool = False  # data.standardize applies to the node's data


class Transport:
    """Messaging and discovery over a Flower ``Grid``."""

    def __init__(
        self,
        grid: Grid,
        *,
        num_clients: int,
        config_json: str,
        timeout: float = 3600.0,
        discovery_timeout: float = 120.0,
    ) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = timeout
        self.discovery_timeout = discovery_timeout
        self._config_json = config_json
        self.shared: dict[str, bool | int | float | str] = {}  # sent with every message
        self.shared_records: dict[str, ArrayRecord] = {}  # sent with every message (send)
        self.excluded: dict[str, str] = {}  # "node <id>" -> why discovery left it out
        self.unreachable: dict[int, str] = {}  # node id -> why its hello got no answer
        self.bytes_out = 0  # record bytes sent and received (Flower's count_bytes)
        self.bytes_in = 0

    # ------------------------------------------------------------------ messaging
    def send(
        self,
        node_ids: list[int],
        message_type: str,
        round_: int,
        arrays: ArrayRecord,
        config: dict[str, bool | int | float | str],
        *,
        records: dict[str, ArrayRecord] | None = None,
        per_node: dict[int, dict[str, bool | int | float | str]] | None = None,
    ) -> dict[int, Message]:
        """Send one message per node and collect the replies by node id.

        ``records`` adds ArrayRecords beside ``arrays``; ``per_node`` adds config entries
        for single nodes. Error replies from the SuperLink are mapped back to their node.
        """
        base: dict[str, Any] = {
            keys.KEY_SERVER_ROUND: round_,
            keys.KEY_EXPERIMENT: self._config_json,
            **self.shared,
            **config,
        }
        extra = {**self.shared_records, **(records or {})}
        per = per_node or {}
        messages = [
            Message(
                RecordDict(
                    {
                        keys.REC_ARRAYS: arrays,
                        **extra,
                        keys.REC_CONFIG: ConfigRecord({**base, **per.get(nid, {})}),
                    }
                ),
                dst_node_id=nid,
                message_type=message_type,
                group_id=str(round_),
            )
            for nid in node_ids
        ]
        by_mid: dict[int, Message] = {}
        self.bytes_out += sum(message_bytes(m) for m in messages)
        replies = send_and_receive(self.grid, messages, timeout=self.timeout)
        self.bytes_in += sum(message_bytes(r) for r in replies)
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
    def fedai_record(reply: Message) -> ConfigRecord:
        """The reply's fedai ConfigRecord (empty if absent)."""
        return reply.content.config_records.get(keys.REC_FEDAI, ConfigRecord())

    # ------------------------------------------------------------------ discovery
    def discover(self) -> dict[int, ClientInfo]:
        """Ask every node who it is; wait (bounded) for ``num_clients`` nodes."""
        want = self.num_clients
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
        replies = self.send(node_ids, keys.MSG_QUERY, 0, ArrayRecord(), {})
        clients: dict[int, ClientInfo] = {}
        for nid in node_ids:
            reply = replies.get(nid)
            if reply is None or reply.has_error():
                reason = reply.error.reason if reply is not None else "no reply"
                logger.warning("node %s failed discovery: %s", nid, reason)
                self.unreachable[nid] = f"failed discovery: {clip_text(reason)}"
                continue
            try:
                clients[nid] = parse_hello(nid, self.fedai_record(reply))
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
        # Nodes that failed or were left out at discovery are not asked again every round;
        # server.availability probes them now and then.
        known = set(clients) | set(self.unreachable)
        known |= {nid for nid in current if f"node {nid}" in self.excluded}
        new = sorted(current - known)
        if new:
            self.admit(clients, self._hello(new))

    def admit(self, clients: dict[int, ClientInfo], infos: dict[int, ClientInfo]) -> None:
        """Add nodes that answered a hello to ``clients``, in place (see :meth:`refresh`)."""
        by_client = {c.client_id: nid for nid, c in clients.items()}
        shape = next(iter(clients.values())).input_shape
        for nid, info in infos.items():
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
            self.unreachable.pop(nid, None)
            self.excluded.pop(f"node {nid}", None)
            clients[nid] = info

    # ------------------------------------------------------------------ probes
    def probe(self, node_ids: list[int]) -> dict[str, int]:
        """Send ``node_ids`` a discovery hello without waiting; message id -> node id.

        Collect the answers later with :meth:`probe_replies` (it never waits either), so
        asking a dead node costs the round nothing.
        """
        messages = [
            Message(
                RecordDict(
                    {
                        keys.REC_ARRAYS: ArrayRecord(),
                        keys.REC_CONFIG: ConfigRecord(
                            {
                                keys.KEY_SERVER_ROUND: 0,
                                keys.KEY_EXPERIMENT: self._config_json,
                                **self.shared,
                            }
                        ),
                    }
                ),
                dst_node_id=nid,
                message_type=keys.MSG_QUERY,
                group_id="0",
            )
            for nid in node_ids
        ]
        self.bytes_out += sum(message_bytes(m) for m in messages)
        ids = list(self.grid.push_messages(messages))
        return {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}

    def probe_replies(self, pending: dict[str, int]) -> dict[int, Message]:
        """The replies that arrived for earlier :meth:`probe` messages, by node id."""
        if not pending:
            return {}
        replies = list(self.grid.pull_messages(list(pending)))
        self.bytes_in += sum(message_bytes(r) for r in replies)
        out: dict[int, Message] = {}
        for reply in replies:
            nid = pending.get(reply.metadata.reply_to_message_id)
            if nid is not None:
                out[nid] = reply
        return out


def parse_hello(nid: int, rec: ConfigRecord) -> ClientInfo:
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
    if not client_id.isprintable():  # it reaches logs, results.json and terminals
        raise ProtocolError(
            f"client id must be printable (no control characters); got {clip_text(client_id)!r}"
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
    standardizes = rec.get(keys.KEY_STANDARDIZES, False)
    if not isinstance(standardizes, bool):
        raise ProtocolError(
            f"{keys.KEY_STANDARDIZES} must be true or false; got {type(standardizes).__name__}"
        )
    return ClientInfo(
        nid,
        client_id,
        as_int(rec[keys.KEY_NUM_TRAIN], what="num-train", lo=1, hi=MAX_EXAMPLES),
        as_int(rec[keys.KEY_NUM_TEST], what="num-test", lo=0, hi=MAX_EXAMPLES),
        shape,
        as_int(rec[keys.KEY_NUM_CLASSES], what="num-classes", lo=2, hi=MAX_CLASSES),
        standardizes=standardizes,
    )


def message_bytes(message: Message) -> int:
    """Bytes of a message's records as Flower counts them (no framing, no metadata)."""
    if not message.has_content():
        return 0
    return sum(record.count_bytes() for record in message.content.values())


def clip_text(value: object, limit: int = 300) -> str:
    """A client-supplied reason, cut to ``limit`` characters for logs and results.

    Control characters (terminal escape sequences included) become ``?``, line breaks and
    tabs a space: the text reaches operators' terminals and log files.
    """
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " if c in "\n\r\t" else "?" for c in text)
    return text


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


__all__ = ["ClientInfo", "Transport", "clip_text", "message_bytes", "parse_hello"]
