"""Whether a finished run succeeded, and the one line that says why not.

A run *failed* (exit status :data:`~fedai.errors.EXIT_FAILED`) when

* no round was accepted, or
* the last :data:`FAILED_TAIL` rounds that ran all failed (3, or every round that ran if
  fewer; rounds that Poisson client sampling skipped are not counted), or
* it stopped before its last planned round (every client's budget exhausted, ...).

Otherwise it succeeded (:data:`~fedai.errors.EXIT_OK`), even if some rounds failed: a
round that fails is discarded and the previous model kept.

The reason names the first real cause, once, with a count: the clients' own error when
the driver saw it (:class:`ClientErrors`, in-process simulation only), else what the
round records carry (a client's failure or refusal reason, the round's own reason, the
stop reason). Example::

    no round was accepted (2 of 2 failed): 3 of 3 clients: privacy.secure_mode ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedai.errors import EXIT_FAILED, EXIT_OK, FedAIError

if TYPE_CHECKING:
    from fedai.results import RoundRecord, RunSummary

#: A run whose last FAILED_TAIL rounds (that ran) all failed has failed.
FAILED_TAIL = 3
#: Longest cause quoted in a reason (a client's error message is cut here).
MAX_CAUSE_CHARS = 400


def describe(err: BaseException) -> str:
    """One line for ``err``: a fedai error's message, else ``Type: message``, clipped."""
    text = str(err).strip()
    text = text.splitlines()[0] if text else ""
    if not isinstance(err, FedAIError) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return _clip(text)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 3] + "..."


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


class ClientErrors:
    """Errors raised inside simulated clients, kept once per message with who raised them.

    Messages that differ only in their numbers (a value, a round) count as one error; the
    first one seen is the one quoted.

    Only the in-process simulator fills one: its clients run in the driver's own process,
    so the driver may see their exceptions in full and nothing crosses a network. A real
    node keeps its error in its own log; the coordinator gets only the error's kind
    (:func:`clients.app.guarded`).
    """

    def __init__(self) -> None:
        # message with numbers masked -> (first message, client ids); first seen first
        self._errors: dict[str, tuple[str, set[str]]] = {}

    def add(self, client_id: str, stage: str, err: BaseException) -> None:
        """Record that ``client_id`` failed ``stage`` (discovery, train, evaluate) with ``err``."""
        text = describe(err)
        self._errors.setdefault(_NUMBER.sub("#", text), (text, set()))[1].add(client_id)

    def __len__(self) -> int:
        return len(self._errors)

    def counts(self) -> list[tuple[str, int]]:
        """``(message, number of clients)`` in the order the messages were first seen."""
        return [(text, len(ids)) for text, ids in self._errors.values()]

    def summary(self, *, num_clients: int) -> str:
        """The first error seen, with how many clients raised it (``""`` if none)."""
        counts = self.counts()
        if not counts:
            return ""
        return _counted(counts, num_clients)


def _counted(counts: list[tuple[str, int]], num_clients: int) -> str:
    """``"k of n clients: first message"`` plus how many other messages there were."""
    message, k = counts[0]
    line = f"{k} of {num_clients} client{'s' if num_clients != 1 else ''}: {message}"
    others = len(counts) - 1
    if others:
        line += f" (and {others} other error{'s' if others != 1 else ''})"
    return line


@dataclass(frozen=True, slots=True)
class Verdict:
    """A run's outcome: ``status`` ``ok`` or ``failed``, its exit code, one-line reason."""

    status: str
    exit_code: int
    reason: str = ""

    @property
    def failed(self) -> bool:
        """True if the run failed."""
        return self.status != "ok"

    def to_dict(self) -> dict[str, Any]:
        """The ``outcome`` entry of ``results.json``."""
        return {"status": self.status, "exit_code": self.exit_code, "reason": self.reason}


def failed(reason: str) -> Verdict:
    """A failed verdict with ``reason`` (e.g. a run that ended without a summary)."""
    return Verdict("failed", EXIT_FAILED, " ".join(reason.split()))


def judge(
    summary: RunSummary,
    *,
    planned_rounds: int,
    num_clients: int,
    errors: ClientErrors | None = None,
) -> Verdict:
    """Decide whether the run that produced ``summary`` succeeded (see the module doc).

    Args:
        summary: The coordinator's records.
        planned_rounds: ``experiment.rounds``.
        num_clients: ``experiment.num_clients`` (the denominator of the counts).
        errors: The clients' own errors, when the driver saw them.
    """
    rounds = summary.rounds
    ran = [r for r in rounds if r.status != "skipped"]
    accepted = [r for r in rounds if r.status == "ok"]
    tail = ran[-FAILED_TAIL:]
    failed_rounds = [r for r in ran if r.status == "failed"]
    if not accepted:
        if not rounds:
            what = "no round ran"
        elif not ran:
            what = f"no round was accepted (all {len(rounds)} skipped)"
        else:
            what = f"no round was accepted ({len(failed_rounds)} of {len(rounds)} failed)"
    elif tail and all(r.status == "failed" for r in tail):
        what = f"the last {len(tail)} rounds failed"
    elif summary.stop_reason or len(rounds) < planned_rounds:
        last = rounds[-1].round if rounds else 0
        what = f"stopped after round {last} of {planned_rounds}"
        cause = summary.stop_reason or "the run ended early"
        return failed(f"{what}: {cause}")
    else:
        return Verdict("ok", EXIT_OK)
    cause = _cause(summary, tail or rounds, num_clients=num_clients, errors=errors)
    return failed(f"{what}: {cause}" if cause else what)


def _cause(
    summary: RunSummary,
    rounds: list[RoundRecord],
    *,
    num_clients: int,
    errors: ClientErrors | None,
) -> str:
    """The first real cause of the failed ``rounds``."""
    if errors is not None and len(errors):
        return errors.summary(num_clients=num_clients)
    for record in rounds:
        if record.status == "ok":
            continue
        if record.trained or not (record.failures or record.refused):
            # Contributions arrived and the aggregate was refused (or nobody was
            # sampled): the round's own reason says why.
            return _clip(record.reason) if record.reason else ""
        return _counted(_client_reasons(rounds), num_clients)
    return _clip(summary.stop_reason)


def _client_reasons(rounds: list[RoundRecord]) -> list[tuple[str, int]]:
    """Each distinct client failure / refusal reason in ``rounds``, with its client count."""
    seen: dict[str, set[str]] = {}
    for record in rounds:
        for cid, reason in [*record.failures.items(), *record.refused.items()]:
            seen.setdefault(_clip(reason), set()).add(cid)
    return [(reason, len(ids)) for reason, ids in seen.items()]


__all__ = ["FAILED_TAIL", "ClientErrors", "Verdict", "describe", "failed", "judge"]
