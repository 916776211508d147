"""``send_and_receive`` for any Flower ``Grid``, polling for replies at a short interval.

Flower's deployment Grid (``flwr.superlink.grid.http_grid.HttpGrid``) waits a hard-coded
3 s between two pulls for replies, so every message a ServerApp sends costs at least 3 s
however fast the nodes answer (no option or environment variable changes it). This is the
same loop over the public ``Grid.push_messages`` / ``Grid.pull_messages`` with a shorter
interval: ``FEDAI_GRID_POLL_INTERVAL`` seconds (default 0.1; each poll is one small HTTP
request to the SuperLink). In-process and Ray grids answer at once or within their own
interval, as before.

A reply polled that early may still be uploading its objects (the SuperLink lists a
reply before its arrays have all arrived), and ``HttpGrid.pull_messages`` then waits
Flower's 1 s ``PULL_INITIAL_BACKOFF`` before asking again; :func:`shorten_object_backoff`
makes that wait 20 ms (doubling to 0.5 s) in this process.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_ENV = "FEDAI_GRID_POLL_INTERVAL"
DEFAULT_POLL_SECONDS = 0.1
MIN_POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 10.0
PULL_INITIAL_BACKOFF = 0.02  # seconds before asking again for an object (Flower: 1 s)
PULL_BACKOFF_CAP = 0.5  # ... doubling up to this (Flower: 10 s)


def shorten_object_backoff(grid: Grid) -> bool:
    """Give Flower's HTTP grid a short object-pull backoff; True if it was changed now.

    A Flower internal: ``flwr.superlink.grid.http_grid`` calls its module-level
    ``pull_objects``. Any other grid (in-process, Ray) is left alone.

    An ``HttpGrid`` exists only once its module is imported; until then nothing is
    imported (``flwr.superlink.grid`` costs ~0.9 s, which an in-process run used to pay
    on its first message).
    """
    if "flwr.superlink.grid.http_grid" not in sys.modules:
        return False
    try:
        from flwr.supercore.inflatable import inflatable_utils
        from flwr.superlink.grid import http_grid
    except ImportError:  # pragma: no cover - a Flower without the HTTP grid
        return False
    if not isinstance(grid, http_grid.HttpGrid):
        return False
    if getattr(http_grid, "pull_objects", None) is not inflatable_utils.pull_objects:
        return False  # already shortened, or Flower moved it
    http_grid.pull_objects = functools.partial(  # type: ignore[attr-defined]
        inflatable_utils.pull_objects,
        initial_backoff=PULL_INITIAL_BACKOFF,
        backoff_cap=PULL_BACKOFF_CAP,
    )
    return True


def poll_interval() -> float:
    """The interval from ``FEDAI_GRID_POLL_INTERVAL`` (default 0.1 s, clamped to 0.01..10)."""
    raw = os.environ.get(POLL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_POLL_SECONDS
    except ValueError:
        value = DEFAULT_POLL_SECONDS
    if not math.isfinite(value):
        value = DEFAULT_POLL_SECONDS
    return min(max(value, MIN_POLL_SECONDS), MAX_POLL_SECONDS)


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float | None = None,
    interval: float | None = None,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed.

    Same contract as ``Grid.send_and_receive``: replies that arrive after the timeout
    are not returned.
    """
    wait = poll_interval() if interval is None else interval
    shorten_object_backoff(grid)
    pending = set(grid.push_messages(messages))
    end = math.inf if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= end:
            break
        time.sleep(min(wait, max(end - time.monotonic(), 0.0)))
    return replies


__all__ = [
    "DEFAULT_POLL_SECONDS",
    "POLL_ENV",
    "PULL_BACKOFF_CAP",
    "PULL_INITIAL_BACKOFF",
    "poll_interval",
    "send_and_receive",
    "shorten_object_backoff",
]
