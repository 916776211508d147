"""The client agent: one long-running ClientApp process behind a SuperNode.

Flower's default (``flower-supernode --isolation subprocess``) starts a new
``flwr-clientapp`` process for every message; each imports torch again (3.5 s idle, ~9 s
when three start at once on 2 cores) and forgets everything the ClientApp had loaded.
Flower's other mode, ``--isolation process``, leaves running tasks to "a separate
independent process outside of SuperNode" that talks to the SuperNode's Runtime API. This
module is that process: it acquires each ClientApp task over the Runtime API (what
``flower-superexec`` does), then runs it *in this process* with Flower's own
``pull_task_input`` / ``push_message`` / ``push_task_output`` (what ``flwr-clientapp``
does), and loops. torch, the ClientApp module, the node's data, codecs and key contexts are
loaded once. Nothing here is a transport of fedai's own: messages, contexts and replies
travel exactly as they do with ``flwr-clientapp``, and the SuperNode keeps ``Context``
state between tasks as before.

The agent runs fedai's *installed* ClientApp (``clients.app:app``), never code shipped by
the coordinator in the run's FAB; a run whose FAB names another ClientApp gets an error
reply. The Runtime API's ``AcquireTask`` is protected with Flower's SuperExec HMAC secret
(``--superexec-auth-secret-file``), so no other local process can take the node's tasks.

Polling. Flower's SuperNode sleeps a hard-coded 3 s whenever the SuperLink had no message
for it, and 0.5 s between checks for a reply (``flwr/supernode/start_client_internal.py``;
no option or environment variable changes them). With a reply pushed in well under a
second, those sleeps are most of a round. :func:`run_supernode` starts Flower's own
``flower-supernode`` entry point with both sleeps capped at ``poll_interval`` (default
0.2 s); ``poll_interval >= 3`` leaves Flower untouched. The SuperExec loop's interval is
Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (this agent's default: 0.05 s; the
Runtime API is on loopback).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
from flwr.app import Message

from fedai.federation.polling import PULL_BACKOFF_CAP, PULL_INITIAL_BACKOFF

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.supercore.fab import Fab
    from flwr.supercore.retry import RetryInvoker
    from flwr.supercore.run import Run
    from flwr.supercore.runtime import RuntimeHttpClient

logger = logging.getLogger(__name__)

CLIENT_APP_REF = "clients.app:app"  # the ClientApp this agent runs (installed with fedai)
FLOWER_SUPERNODE_POLL_SECONDS = 3.0  # the SuperNode's idle sleep in flwr 1.41
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's knob for the SuperExec loop
DEFAULT_TASK_POLL_SECONDS = 0.05
DEFAULT_SUPERNODE_POLL_SECONDS = 0.2
TORCH_THREADS_KEY = "torch-threads"  # node-config key; default 1
_ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
TASK_RETRY_SECONDS = 60.0  # a task's Runtime API calls retry transport errors this long


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What one task did, for the agent's log line."""

    task_id: int
    run_id: int
    message_type: str
    group_id: str
    seconds: float  # the whole task: pull, ClientApp, push
    pull_seconds: float  # task input and message from the SuperNode
    push_seconds: float  # the reply and the task's status back to the SuperNode
    app_seconds: float  # the ClientApp call alone
    status: str  # "completed" | "failed"
    details: str = ""


def torch_threads(node_config: dict[str, Any]) -> int:
    """The node config's ``torch-threads`` (default 1).

    Raises:
        ValueError: it is not a positive integer.
    """
    raw = node_config.get(TORCH_THREADS_KEY, 1)
    try:
        threads = int(str(raw))
    except ValueError:
        threads = 0
    if threads < 1 or str(threads) != str(raw).strip():
        raise ValueError(f"node_config {TORCH_THREADS_KEY} must be an integer >= 1; got {raw!r}")
    return threads


def set_torch_threads(node_config: dict[str, Any]) -> int:
    """Cap torch's intra-op threads at the node config's ``torch-threads`` (default 1).

    One thread per agent: several agents (or an agent beside other work) on few cores
    oversubscribe them with torch's default (one per core), and the results then drift
    from ``fedai simulate``, which also trains with one thread.

    Raises:
        ValueError: ``torch-threads`` is not a positive integer.
    """
    threads = torch_threads(node_config)
    import torch

    torch.set_num_threads(threads)
    return threads


def load_client_app() -> ClientApp:
    """Import fedai's installed ClientApp (``clients.app:app``)."""
    from clients.app import app

    return app


def fab_problem(fab: Fab) -> str:
    """Why this agent will not run the FAB's ClientApp ("" if it will)."""
    from flwr.common.config import get_fab_config

    try:
        config = get_fab_config(fab.content)
        ref = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as err:
        return f"the run's app has no readable [tool.flwr.app.components] ({err})"
    if ref != CLIENT_APP_REF:
        return (
            f"this node runs fedai's installed ClientApp {CLIENT_APP_REF!r}; the run's app "
            f"names {ref!r}"
        )
    return ""


class ClientAppWorker:
    """Runs every ClientApp task of one SuperNode in this process, one at a time."""

    def __init__(
        self,
        runtime_api_address: str,
        *,
        client_app: ClientApp,
        auth_secret: bytes | None,
        poll_interval: float = DEFAULT_TASK_POLL_SECONDS,
        on_task: Callable[[TaskReport], None] | None = None,
    ) -> None:
        self.runtime_api_address = runtime_api_address
        self.client_app = client_app
        self.poll_interval = poll_interval
        self.on_task = on_task
        self.tasks_run = 0
        self._auth_secret = auth_secret

    def _client(self, token: str | None) -> RuntimeHttpClient:
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.protobuf.client import ProtobufClientInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors: list[ProtobufClientInterceptor] = []
        if token is None:
            interceptors.append(RuntimeVersionHttpInterceptor(component_name="SuperExec"))
            if self._auth_secret:
                interceptors.append(
                    SuperExecAuthHttpInterceptor(
                        master_secret=self._auth_secret, protected_methods={_ACQUIRE_METHOD}
                    )
                )
        else:
            interceptors.append(RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"))
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=True,  # loopback, as Flower's own SuperNode -> SuperExec link
            root_certificates=None,
            interceptors=interceptors,
            retry_invoker=_retry_invoker(max_time=None if token is None else TASK_RETRY_SECONDS),
        )

    def serve(self, stop: threading.Event) -> None:
        """Acquire and run tasks until ``stop`` is set."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        acquirer = self._client(None)
        request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
        try:
            while not stop.is_set():
                try:
                    res = acquirer.AcquireTask(request)
                except httpx.HTTPError as err:  # the SuperNode restarting, or refusing
                    logger.warning("AcquireTask failed: %s", err)
                    stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    report = self.run_task(res.token, res.task.task_id)
                    self.tasks_run += 1
                    if self.on_task is not None:
                        self.on_task(report)
                    continue  # another message may already be waiting
                stop.wait(self.poll_interval)
        finally:
            acquirer.close()

    def run_task(self, token: str, task_id: int) -> TaskReport:
        """Run one acquired task: pull its input, call the ClientApp, push the reply."""
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        t0 = time.perf_counter()
        app_seconds = pull_seconds = push_seconds = 0.0
        client = self._client(token)
        heartbeat = HeartbeatSender(_task_heartbeat(client))
        message: Message | None = None
        context: Context | None = None
        run: Run | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            pull_seconds = time.perf_counter() - t0
            problem = fab_problem(fab)
            if problem:
                logger.error("run %s refused: %s", run.run_id, problem)
                reply = Message(
                    Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=problem),
                    reply_to=message,
                )
                details = problem
            else:
                t_app = time.perf_counter()
                reply = self.client_app(message=message, context=context)
                app_seconds = time.perf_counter() - t_app
                status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # the agent survives any task; Flower does the same
            # Only the error's type leaves the node: its message may quote local data.
            reason = f"ClientApp raised {type(err).__name__} (details in the node's log)"
            logger.exception("ClientApp task %s raised", task_id)
            details = reason
            if message is not None:
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
        finally:
            t_push = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception:
                logger.exception("task %s: pushing the reply failed", task_id)
                status, details = SubStatus.FAILED, "pushing the reply failed"
            push_task_output(client=client, context=context, sub_status=status, details=details)
            push_seconds = time.perf_counter() - t_push
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
        return TaskReport(
            task_id=task_id,
            run_id=run.run_id if run is not None else 0,
            message_type=message.metadata.message_type if message is not None else "?",
            group_id=message.metadata.group_id if message is not None else "",
            seconds=time.perf_counter() - t0,
            pull_seconds=pull_seconds,
            push_seconds=push_seconds,
            app_seconds=app_seconds,
            status=str(status),
            details=details,
        )


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """Flower's ``run_clientapp.pull_task_input`` with a short object-pull backoff.

    This agent acquires a task as soon as the SuperNode creates it, which is before the
    SuperNode has finished pulling the message's objects from the SuperLink; Flower's
    default backoff for an object not there yet is 1 s (``PULL_INITIAL_BACKOFF``), made
    for a ``flwr-clientapp`` that needs seconds to start. Here: 20 ms, doubling to 0.5 s.
    """
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message received from the Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=PULL_INITIAL_BACKOFF,
        backoff_cap=PULL_BACKOFF_CAP,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does
    return message, context, run, fab


def _retry_invoker(*, max_time: float | None) -> RetryInvoker:
    """Retry transport errors (backoff up to 2 s); give up on HTTP errors at once.

    Flower's ``make_simple_http_retry_invoker`` sends SIGINT to its own process on an
    HTTP 401 (right for a one-task ``flwr-clientapp``); this agent must survive a task
    the SuperNode no longer knows.
    """
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=2),
        recoverable_exceptions=(httpx.TransportError,),
        max_tries=None,
        max_time=max_time,
    )


def _task_heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """Flower's task heartbeat, minus its SIGINT when the task is gone.

    ``flwr.supercore.heartbeat.make_task_heartbeat_fn_http`` raises SIGINT in the process
    when the SuperNode no longer knows the task (fine for a one-task ``flwr-clientapp``);
    in this long-running agent a lost task must cost only that task.
    """
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            res = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (503, 504):
                return False
            logger.warning("task heartbeat refused: %s", err)
            return True  # do not retry a refusal; the task's push will tell
        if not res.success:
            logger.warning("the SuperNode no longer knows the running task")
        return True

    return beat


# ---------------------------------------------------------------------- SuperNode
class _CappedClock(ModuleType):
    """The ``time`` module with ``sleep`` capped at a poll interval."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self._cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, cap)``."""
        time.sleep(min(seconds, self._cap))


def tune_supernode_polling(poll_interval: float) -> bool:
    """Cap the SuperNode's sleeps at ``poll_interval`` and shorten its object-pull backoff.

    Flower internals of ``flwr.supernode.start_client_internal``: it sleeps through its
    module-level ``time`` (3 s when the SuperLink had nothing, 0.5 s between checks for a
    reply), and pulls a message's objects with ``pull_objects`` whose first retry waits
    1 s (an object the ServerApp has not finished pushing). Both are replaced here, in
    this process only. Returns False (nothing changed) when ``poll_interval >= 3`` s.

    Raises:
        RuntimeError: Flower no longer has those module attributes (an upgrade moved
            them); ``--poll-interval 3`` runs Flower as it is.
    """
    if poll_interval >= FLOWER_SUPERNODE_POLL_SECONDS:
        return False
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as sci

    if getattr(sci, "time", None) is not time or (
        getattr(sci, "pull_objects", None) is not inflatable_utils.pull_objects
    ):
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer uses time.sleep and "
            "pull_objects as flwr 1.41 did; run with --poll-interval 3"
        )
    sci.time = _CappedClock(poll_interval)  # type: ignore[attr-defined]
    sci.pull_objects = _PullObjectsOrFail(  # type: ignore[attr-defined]
        inflatable_utils.pull_objects,
        initial_backoff=PULL_INITIAL_BACKOFF,
        backoff_cap=PULL_BACKOFF_CAP,
    )
    return True


class _PullObjectsOrFail(functools.partial[dict[str, bytes]]):
    """Flower's ``pull_objects`` (a partial); a run that stopped running is a failure.

    When the SuperLink restarts (a coordinator killed while it sent a round), pulling the
    old run's message objects raises Flower's ``RunNotRunningException``; flwr 1.41 then
    drops the message but leaves its task open, and this agent, which acquired the task
    already, waits minutes for objects that never come while the new run's messages
    queue behind it. Raised as an ``Exception`` instead, the SuperNode takes its own
    failure path: the message is deleted and the task finished as failed, so the agent's
    pull fails at once and it takes the next task.
    """

    def __call__(self, /, *args: Any, **kwargs: Any) -> dict[str, bytes]:
        from flwr.supercore.run import RunNotRunningException

        try:
            return super().__call__(*args, **kwargs)
        except RunNotRunningException as err:
            raise RuntimeError("the run is no longer running on the SuperLink") from err


def run_supernode(argv: list[str], *, poll_interval: float, parent_pid: int | None) -> None:
    """Run Flower's ``flower-supernode`` with ``argv``, capped polling, a parent watch.

    With ``parent_pid`` the SuperNode stops (Flower's own parent-process monitor, as its
    SuperExec uses) when the ``fedai client`` that started it is gone, even after SIGKILL.
    """
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supernode.cli import flower_supernode

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    tune_supernode_polling(poll_interval)
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def main(argv: list[str] | None = None) -> None:
    """``python -m fedai.federation.agent supernode --poll-interval S [--parent-pid P] -- ARGS``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedai.federation.agent")
    parser.add_argument("mode", choices=["supernode"])
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_SUPERNODE_POLL_SECONDS)
    parser.add_argument("--parent-pid", type=int, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    rest = argv[cut + 1 :]
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    run_supernode(rest, poll_interval=args.poll_interval, parent_pid=args.parent_pid)


__all__ = [
    "CLIENT_APP_REF",
    "ClientAppWorker",
    "TaskReport",
    "fab_problem",
    "load_client_app",
    "run_supernode",
    "set_torch_threads",
    "torch_threads",
    "tune_supernode_polling",
]

if __name__ == "__main__":  # pragma: no cover
    main()
