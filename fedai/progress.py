"""Progress lines for work that takes more than a couple of seconds.

One line per step on stderr, ``fedai <command>: <message>``, so a user knows the command
is alive: Ray start-up, audit models, encrypted inference batches, key creation. Output is
off until an entry point turns it on: the ``fedai`` command does (``-q`` keeps it off),
so library use in tests or notebooks prints nothing. Library code reports through
:func:`report` or a :class:`Steps` counter and never decides whether anything is shown.

Example:
    >>> from fedai import progress
    >>> progress.report("starting")  # off by default: prints nothing
    >>> progress.is_enabled()
    False
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Steps", "configure", "is_enabled", "report", "when_slow"]


@dataclass(slots=True)
class _State:
    enabled: bool = False
    prefix: str = "fedai"
    stream: TextIO | None = None


_STATE = _State()


def configure(*, enabled: bool, prefix: str = "fedai", stream: TextIO | None = None) -> None:
    """Turn progress lines on or off; entry points call this once.

    Args:
        enabled: print progress lines.
        prefix: what starts each line, e.g. ``"fedai audit"``.
        stream: where to print; None means ``sys.stderr`` at the time of printing.
    """
    _STATE.enabled = enabled
    _STATE.prefix = prefix
    _STATE.stream = stream


def is_enabled() -> bool:
    """Return whether progress lines are printed."""
    return _STATE.enabled


def report(message: str) -> None:
    """Print ``<prefix>: <message>`` on stderr if progress is on."""
    if not _STATE.enabled:
        return
    stream = _STATE.stream if _STATE.stream is not None else sys.stderr
    print(f"{_STATE.prefix}: {message}", file=stream, flush=True)


@contextlib.contextmanager
def when_slow(message: str, *, after: float = 1.0) -> Iterator[None]:
    """Report ``message`` only if the block is still running ``after`` seconds later.

    For work that is usually quick but sometimes is not (key generation): an input error
    raised at once is then the only line the user sees.
    """
    if not _STATE.enabled:
        yield
        return
    timer = threading.Timer(after, report, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@dataclass(slots=True)
class Steps:
    """Numbered steps of one piece of work: ``[3/9] message (12.4 s so far)``.

    Args:
        total: number of steps, if known.
        label: what the steps belong to, put before each message.
    """

    total: int | None = None
    label: str = ""
    done: int = 0
    _start: float = field(default_factory=time.perf_counter)

    def step(self, message: str) -> None:
        """Report the start of the next step."""
        self.done += 1
        count = f"[{self.done}/{self.total}]" if self.total else f"[{self.done}]"
        label = f"{self.label}: " if self.label else ""
        elapsed = time.perf_counter() - self._start
        report(f"{label}{count} {message} ({elapsed:.1f} s so far)")
