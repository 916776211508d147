"""Every use of a Flower internal (non-public API) that fedai relies on, in one place.

The in-process runner needs to do what Flower's runtimes do before running an app:
set the process-wide task identity that ``Message(...)`` reads for its metadata, and
build ``Context``/``Run`` objects. If a Flower upgrade moves these, the test
``tests/unit/federation/test_flower_internals.py`` fails here and nowhere else.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict, UserConfig
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SUPERLINK_NODE_ID = 1  # Flower's node id for the coordinator (flwr.common.constant)


def set_task_identity(*, run_id: int, node_id: int, task_id: int = 1) -> None:
    """Set the identity ``Message()`` stamps on messages created in this process."""
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


def make_context(
    *, run_id: int, node_id: int, node_config: UserConfig, run_config: UserConfig
) -> Context:
    """Return a fresh ``Context`` with empty state."""
    return Context(
        run_id=run_id,
        node_id=node_id,
        node_config=dict(node_config),
        state=RecordDict(),
        run_config=dict(run_config),
    )


def make_run(run_id: int, run_config: UserConfig) -> Run:
    """Return a ``Run`` record for an in-process run."""
    run = Run.create_empty(run_id)
    run.override_config = dict(run_config)
    return run


def set_message_id(message: Message, message_id: str) -> None:
    """Assign a message id (what the SuperLink does when it stores a message)."""
    # Flower's own grids do exactly this (flwr/superlink/grid/inmemory_grid.py).
    message.metadata.__dict__["_message_id"] = message_id


__all__ = ["SUPERLINK_NODE_ID", "make_context", "make_run", "set_message_id", "set_task_identity"]
