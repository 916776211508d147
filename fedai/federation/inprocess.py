"""In-process runner: drives a ServerApp and a ClientApp with an in-memory Grid, no Ray.

The same app objects that run under Flower's Simulation Engine and Deployment Engine
run here, message by message, in one process: the Grid hands each message to the
ClientApp with that node's persistent ``Context`` (so ``context.state`` survives rounds
exactly as it does on a SuperNode) and returns the replies. A ClientApp exception becomes
an error reply, as on a real node. Start-up costs nothing beyond importing the apps.

Messages are deep-copied in both directions so that neither side can share Python
objects with the other, as a real transport guarantees. ``tap`` (optional) sees every
message the coordinator sends and receives.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence

from flwr.app import Error, Message, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedai.federation import flower_internals as fi

logger = logging.getLogger(__name__)

CLIENT_EXCEPTION_CODE = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION
Tap = Callable[[str, Message], None]


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Sequence[UserConfig],
        *,
        run_id: int,
        run_config: UserConfig,
        tap: Tap | None = None,
    ) -> None:
        self._client_app = client_app
        self._run = fi.make_run(run_id, run_config)
        self._ids = itertools.count(1)
        # Node ids as Flower assigns them: arbitrary ints, not partition ids.
        self._contexts = {
            1000 + i: fi.make_context(
                run_id=run_id, node_id=1000 + i, node_config=cfg, run_config=run_config
            )
            for i, cfg in enumerate(node_configs)
        }
        self._pending: dict[str, Message] = {}
        self._tap = tap

    # -- Grid API --------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Set the run this Grid operates in."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this Grid operates in."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create an instruction message (metadata from the task identity)."""
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the in-process nodes."""
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver messages now; return their ids."""
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"message for unknown node {msg.metadata.dst_node_id}")
            mid = f"m{next(self._ids)}"
            fi.set_message_id(msg, mid)
            if self._tap:
                self._tap("send", msg)
            self._pending[mid] = self._deliver(msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return the replies to the given message ids."""
        out = []
        for mid in message_ids:
            reply = self._pending.pop(mid, None)
            if reply is not None:
                if self._tap:
                    self._tap("receive", reply)
                out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message and return the replies (in-process: no waiting)."""
        return self.pull_messages(self.push_messages(messages))

    def restart_node(self, node_id: int) -> int:
        """Simulate an agent restart: same node config, fresh Context, a new node id.

        Whatever the node kept only in ``Context.state`` is gone, as after a real process
        restart; what it kept on disk (``state-dir``) is not.
        """
        node_config = self._contexts.pop(node_id).node_config
        new_id = max([node_id, *self._contexts]) + 1
        self._contexts[new_id] = fi.make_context(
            run_id=self._run.run_id,
            node_id=new_id,
            node_config=node_config,
            run_config=self._run.override_config,
        )
        return new_id

    # -- delivery --------------------------------------------------------------------
    def _deliver(self, msg: Message) -> Message:
        """Run the ClientApp on a copy of ``msg`` in the destination node's context."""
        node_id = msg.metadata.dst_node_id
        inbound = Message(
            copy.deepcopy(msg.content),
            dst_node_id=node_id,
            message_type=msg.metadata.message_type,
            group_id=msg.metadata.group_id,
        )
        # The ClientApp sees the message as addressed from the coordinator.
        inbound.metadata.__dict__.update(
            {"_message_id": msg.metadata.message_id, "_src_node_id": fi.SUPERLINK_NODE_ID}
        )
        fi.set_task_identity(run_id=self._run.run_id, node_id=node_id)
        try:
            reply = self._client_app(inbound, self._contexts[node_id])
            reply = (
                Message(copy.deepcopy(reply.content), reply_to=inbound)
                if reply.has_content()
                else reply
            )
        except Exception as err:
            logger.warning("ClientApp on node %s raised %s: %s", node_id, type(err).__name__, err)
            logger.debug("%s", traceback.format_exc())
            reply = Message(
                Error(code=CLIENT_EXCEPTION_CODE, reason=f"{type(err).__name__}: {err}"),
                reply_to=inbound,
            )
        finally:
            fi.set_task_identity(run_id=self._run.run_id, node_id=fi.SUPERLINK_NODE_ID)
        fi.set_message_id(reply, f"r{msg.metadata.message_id}")
        return reply


def run_inprocess(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_supernodes: int,
    run_config: Mapping[str, bool | int | float | str] | None = None,
    node_configs: Sequence[UserConfig] | None = None,
    run_id: int = 1,
    tap: Tap | None = None,
    torch_threads: int | None = 1,
) -> float:
    """Run ``server_app`` against ``num_supernodes`` in-process ClientApps; return seconds.

    ``node_configs`` defaults to Flower's simulation node config
    (``partition-id``/``num-partitions``). ``torch_threads`` caps torch's intra-op threads
    (default 1: many small clients in one process; with 2 threads on a busy 2-core machine
    a 20-round quickstart measured 30x slower). ``None`` leaves torch's setting alone.
    """
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    cfg: UserConfig = dict(run_config or {})
    nodes = (
        list(node_configs)
        if node_configs is not None
        else [
            dict[str, bool | int | float | str](
                {"partition-id": i, "num-partitions": num_supernodes}
            )
            for i in range(num_supernodes)
        ]
    )
    t0 = time.perf_counter()
    fi.set_task_identity(run_id=run_id, node_id=fi.SUPERLINK_NODE_ID)
    grid = InProcessGrid(client_app, nodes, run_id=run_id, run_config=cfg, tap=tap)
    context = fi.make_context(
        run_id=run_id, node_id=fi.SUPERLINK_NODE_ID, node_config={}, run_config=cfg
    )
    server_app(grid, context)
    return time.perf_counter() - t0


__all__ = ["InProcessGrid", "run_inprocess"]
