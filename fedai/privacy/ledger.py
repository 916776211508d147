"""The privacy ledger: one client's DP-SGD history across rounds, restarts and budgets.

A Flower ClientApp object is rebuilt every round, and an on-prem agent can restart, so
the accountant state cannot live in a ``PrivacyEngine``. Instead each client keeps a
:class:`PrivacyLedger` of ``(noise_multiplier, sample_rate, steps)`` events, one per round
it trained, and computes its cumulative epsilon from the *whole* history with an Opacus
accountant (RDP, Mironov 2017; PRV, Gopi et al. 2021). The ledger is plain data:
``to_dict``/``from_dict`` for Flower's ``Context.state``, and :meth:`PrivacyLedger.save` /
:meth:`PrivacyLedger.load` (atomic write: temp file, ``fsync``, ``os.replace``) for a real
node. A corrupt file raises :class:`~fedai.errors.LedgerError` naming it; a ledger is
never reset silently.

Budgets follow dp_accounting's dry-run-then-commit pattern: :meth:`~PrivacyLedger.check`
computes the epsilon the next round *would* reach and refuses (marking the ledger
exhausted) before any training; :meth:`~PrivacyLedger.record` commits the event that
actually ran.

Runs and resumes. Every entry records the coordinator's run id (random, kept across
coordinator resumes) and session (random, new at each coordinator start) beside the round.
A coordinator that crashed and resumed from its checkpoint re-sends the rounds after its
last completed one. :meth:`~PrivacyLedger.start_round` refuses a round the ledger already
charged for that run (:class:`~fedai.errors.RoundAlreadyChargedError`): a second training
would be a second noisy release of the same data, a real and separate privacy cost, so
the client does not train again, and the coordinator leaves it out of that round.
:meth:`~PrivacyLedger.mark_lost` marks the entries whose result the coordinator lost
(charged in an earlier session, in a round after the one it resumed from) ``lost``: they
stay in the history and in epsilon (the noise was released), and ``fedai privacy ledger``
shows them.

Continuity. A ledger that went missing or was replaced by an older copy would restart a
client's epsilon below what it already released. :meth:`~PrivacyLedger.check_continuity`
compares the ledger with a coordinator's checkpointed view of it (rounds of the run it
saw charged, the epsilon last reported) and refuses
(:class:`~fedai.errors.LedgerContinuityError`) when the ledger holds less; a lower view
changes nothing.

Example:
    >>> ledger = PrivacyLedger(client_id="c0", delta=1e-5, budget_epsilon=8.0)
    >>> _ = ledger.check(DpSgdEvent(1.0, 0.05, 40))
    >>> entry = ledger.record(round=1, event=DpSgdEvent(1.0, 0.05, 40))
    >>> 0 < entry.epsilon < 8
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedai.errors import (
    InvalidPrivacyParameterError,
    LedgerContinuityError,
    LedgerError,
    PrivacyBudgetExceededError,
    RoundAlreadyChargedError,
)
from fedai.fileio import atomic_write
from fedai.privacy.accounting import (
    ACCOUNTANTS,
    DpSgdEvent,
    check_delta,
    check_event,
    check_positive,
    epsilon_from_history,
)

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "fedai.privacy-ledger"
LEDGER_VERSION = 2  # 2 added run_id, session and lost to entries; version 1 files load
READABLE_VERSIONS = (1, 2)
MAX_ID_CHARS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """One round a client trained: the event it ran and the cumulative epsilon after it.

    Attributes:
        round: the federated round number (>= 1).
        noise_multiplier: DP-SGD sigma used in that round.
        sample_rate: Poisson sampling rate ``q`` used in that round.
        steps: optimizer steps (noisy gradient releases) in that round.
        epsilon: cumulative epsilon of every entry up to and including this one.
        delta: the delta ``epsilon`` is stated at.
        accountant: the accountant that computed ``epsilon`` (``rdp`` or ``prv``).
        run_id: the coordinator's run id (``""``: not known, e.g. a version-1 ledger).
        session: the coordinator start that asked for the round (``""``: not known).
        lost: the coordinator lost this round's result (it crashed and resumed from an
            earlier round); the spend is real and stays in epsilon.
    """

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float
    accountant: str
    run_id: str = ""
    session: str = ""
    lost: bool = False

    @property
    def event(self) -> DpSgdEvent:
        """The ``(noise_multiplier, sample_rate, steps)`` triple of this round."""
        return DpSgdEvent(self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "round": self.round,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "run_id": self.run_id,
            "session": self.session,
            "lost": self.lost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        """Inverse of :meth:`to_dict`.

        Raises:
            LedgerError: missing keys or values outside their domain.
        """
        try:
            event = check_event(
                (data["noise_multiplier"], data["sample_rate"], data["steps"]),
                where="ledger entry",
            )
            rnd = data["round"]
            eps = data["epsilon"]
            delta = check_delta(data["delta"], name="ledger entry.delta")
            accountant = data["accountant"]
        except (KeyError, TypeError) as err:
            raise LedgerError(
                f"ledger entry must have round, noise_multiplier, sample_rate, "
                f"steps, epsilon, delta, accountant; got {data!r}"
            ) from err
        except InvalidPrivacyParameterError as err:
            raise LedgerError(str(err)) from err
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1:
            raise LedgerError(f"ledger entry.round must be an integer >= 1; got {rnd!r}")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
            raise LedgerError(f"ledger entry.epsilon must be a number >= 0; got {eps!r}")
        if accountant not in ACCOUNTANTS:
            raise LedgerError(
                f"ledger entry.accountant must be one of rdp, prv; got {accountant!r}"
            )
        run_id, session = data.get("run_id", ""), data.get("session", "")
        lost = data.get("lost", False)
        for name, value in (("run_id", run_id), ("session", session)):
            if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
                raise LedgerError(
                    f"ledger entry.{name} must be a string of <= {MAX_ID_CHARS} characters; "
                    f"got {value!r}"
                )
        if not isinstance(lost, bool):
            raise LedgerError(f"ledger entry.lost must be true or false; got {lost!r}")
        return cls(
            round=rnd,
            noise_multiplier=event.noise_multiplier,
            sample_rate=event.sample_rate,
            steps=event.steps,
            epsilon=float(eps),
            delta=delta,
            accountant=str(accountant),
            run_id=run_id,
            session=session,
            lost=lost,
        )

    def charged_in(self, run_id: str, round: int) -> bool:
        """Whether this entry is a charge for round ``round`` of run ``run_id``."""
        return bool(self.run_id) and self.run_id == run_id and self.round == round


class PrivacyLedger:
    """One client's cumulative sample-level privacy spend.

    Args:
        client_id: the client (partition / node) this ledger belongs to.
        delta: the delta epsilon is stated at, in (0, 1).
        accountant: ``"rdp"`` (Mironov 2017) or ``"prv"`` (Gopi et al. 2021).
        budget_epsilon: the client's cap; ``None`` means no cap.
        entries: previously recorded rounds (e.g. restored from disk).
        exhausted: whether a previous round was refused for budget.

    Raises:
        InvalidPrivacyParameterError: bad delta, accountant or budget.
    """

    def __init__(
        self,
        *,
        client_id: str,
        delta: float,
        accountant: str = "rdp",
        budget_epsilon: float | None = None,
        entries: Iterable[LedgerEntry] = (),
        exhausted: bool = False,
    ) -> None:
        if not isinstance(client_id, str) or not client_id:
            raise InvalidPrivacyParameterError(
                f"client_id must be a non-empty string; got {client_id!r}"
            )
        if accountant not in ACCOUNTANTS:
            raise InvalidPrivacyParameterError(
                f"accountant must be one of rdp, prv; got {accountant!r}"
            )
        self._client_id = client_id
        self._delta = check_delta(delta)
        self._accountant = accountant
        self._budget = (
            None
            if budget_epsilon is None
            else check_positive(budget_epsilon, name="budget_epsilon")
        )
        self._entries: list[LedgerEntry] = list(entries)
        self._exhausted = bool(exhausted)
        self._cache: dict[tuple[int, float, str], float] = {}
        self._pending: tuple[str, str, int] | None = None  # (run id, session, round) claimed

    # ------------------------------------------------------------------ views
    @property
    def client_id(self) -> str:
        """The client this ledger belongs to."""
        return self._client_id

    @property
    def delta(self) -> float:
        """The delta epsilon is stated at."""
        return self._delta

    @property
    def accountant(self) -> str:
        """The accountant name (``rdp`` or ``prv``)."""
        return self._accountant

    @property
    def budget_epsilon(self) -> float | None:
        """The client's epsilon cap, or ``None``."""
        return self._budget

    @property
    def exhausted(self) -> bool:
        """True once a round was refused because it would exceed the budget."""
        return self._exhausted

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded round, oldest first."""
        return tuple(self._entries)

    @property
    def history(self) -> list[DpSgdEvent]:
        """The ``(noise_multiplier, sample_rate, steps)`` events, oldest first.

        Every entry counts, ``lost`` ones included: their noise was released.
        """
        return [e.event for e in self._entries]

    @property
    def lost(self) -> tuple[LedgerEntry, ...]:
        """The entries whose result the coordinator lost (still counted in epsilon)."""
        return tuple(e for e in self._entries if e.lost)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(client_id={self._client_id!r}, rounds={len(self._entries)}, "
            f"epsilon={self.epsilon():.4g}, delta={self._delta:g}, "
            f"accountant={self._accountant!r}, budget_epsilon={self._budget!r}, "
            f"exhausted={self._exhausted})"
        )

    # ------------------------------------------------------------------ accounting
    def epsilon(self, *, delta: float | None = None, accountant: str | None = None) -> float:
        """Return the cumulative epsilon of the whole history.

        Args:
            delta: defaults to the ledger's delta.
            accountant: defaults to the ledger's accountant.
        """
        d = self._delta if delta is None else check_delta(delta)
        a = self._accountant if accountant is None else accountant
        key = (len(self._entries), d, a)
        if key not in self._cache:
            self._cache[key] = epsilon_from_history(self.history, delta=d, accountant=a)
        return self._cache[key]

    def projected_epsilon(self, event: DpSgdEvent | Sequence[float]) -> float:
        """Return the epsilon the history would reach with ``event`` added (dry run)."""
        ev = check_event(event, where="next round")
        return epsilon_from_history(
            [*self.history, ev], delta=self._delta, accountant=self._accountant
        )

    def would_exceed(self, event: DpSgdEvent | Sequence[float]) -> bool:
        """Return True if adding ``event`` would push epsilon past the budget."""
        if self._budget is None:
            return False
        return self.projected_epsilon(event) > self._budget

    def check(self, event: DpSgdEvent | Sequence[float]) -> float:
        """Refuse a round that would exceed the budget; return the projected epsilon.

        Call this before training. A refusal marks the ledger exhausted (persist it).

        Raises:
            PrivacyBudgetExceededError: the ledger is already exhausted, or the round would
                push epsilon past ``budget_epsilon``.
        """
        if self._exhausted:
            raise PrivacyBudgetExceededError(
                f"client {self._client_id!r} has exhausted its privacy budget "
                f"(epsilon {self.epsilon():.4g} of budget {self._budget!r} at delta "
                f"{self._delta:g}, {self._accountant}); it will not train again"
            )
        projected = self.projected_epsilon(event)
        if self._budget is not None and projected > self._budget:
            self._exhausted = True
            raise PrivacyBudgetExceededError(
                f"client {self._client_id!r}: next round (sigma={event[0]:.4g}, "
                f"q={event[1]:.4g}, steps={event[2]}) would raise epsilon from "
                f"{self.epsilon():.4g} to {projected:.4g}, past budget_epsilon "
                f"{self._budget:g} at delta {self._delta:g} ({self._accountant}); refusing"
            )
        return projected

    # ------------------------------------------------------------------ runs and resumes
    def charge_of(self, *, run_id: str, round: int) -> LedgerEntry | None:
        """The entry charging round ``round`` of run ``run_id``, or None."""
        return next((e for e in self._entries if e.charged_in(run_id, round)), None)

    def charges_in(self, run_id: str) -> int:
        """How many entries charge a round of run ``run_id`` (``lost`` ones included)."""
        return sum(1 for e in self._entries if e.run_id and e.run_id == run_id)

    def check_continuity(
        self, *, run_id: str, seen_charges: int, seen_epsilon: float, source: str = "ledger"
    ) -> None:
        """Refuse to go on from a ledger that holds less than the run already saw of it.

        ``seen_charges`` and ``seen_epsilon`` are a coordinator's view of this ledger
        (its checkpoint): the rounds of ``run_id`` it saw this client charge and the
        cumulative epsilon it last reported. Entries are never removed and epsilon only
        grows as events compose, so a ledger with fewer charges of the run, or a lower
        epsilon (beyond float and accountant tolerance), was lost or replaced: training
        on would restart this client's epsilon below what it already released. A view
        lower than the ledger changes nothing (a coordinator cannot widen anything here).

        Args:
            run_id: The run the view is of.
            seen_charges: Rounds of ``run_id`` the coordinator saw charged (>= 0).
            seen_epsilon: The cumulative epsilon it last saw reported (>= 0).
            source: How messages name this ledger (e.g. its file name).

        Raises:
            LedgerContinuityError: the ledger holds fewer charges of ``run_id`` or a
                lower epsilon than the view.
        """
        held = self.charges_in(run_id)
        eps = self.epsilon()
        if held >= seen_charges and eps >= seen_epsilon - epsilon_tolerance(
            seen_epsilon, accountant=self._accountant
        ):
            return
        raise LedgerContinuityError(
            f"client {self._client_id}: {source} holds {held} charged round(s) of run "
            f"{run_id} (epsilon {eps:.4g}); the coordinator's checkpoint recorded "
            f"{seen_charges} (epsilon {seen_epsilon:.4g}): the ledger was lost or replaced; "
            "refusing to train from zero",
            client_id=self._client_id,
        )

    def start_round(self, *, run_id: str, round: int, session: str = "") -> None:
        """Claim round ``round`` of run ``run_id`` before training; refuse a second charge.

        The next :meth:`record` of that round is stamped with ``run_id`` and ``session``.

        Why refuse rather than train again: after a coordinator resume the same round can
        arrive twice. Training again would release a second noisy update of the same data:
        its privacy cost is real and adds to the first, and the first release (which the
        coordinator lost) cannot be taken back. Refusing costs the round this client's
        contribution only; the coordinator leaves the client out of that round and samples
        it again in the next.

        Raises:
            InvalidPrivacyParameterError: an empty or over-long run id, or a bad round.
            RoundAlreadyChargedError: the ledger already charged that (run id, round).
        """
        _check_id(run_id, name="run_id", allow_empty=False)
        _check_id(session, name="session", allow_empty=True)
        if isinstance(round, bool) or not isinstance(round, int) or round < 1:
            raise InvalidPrivacyParameterError(f"round must be an integer >= 1; got {round!r}")
        charged = self.charge_of(run_id=run_id, round=round)
        if charged is not None:
            state = "lost by the coordinator, " if charged.lost else ""
            raise RoundAlreadyChargedError(
                f"round {round} of run {run_id} already charged ({state}epsilon "
                f"{charged.epsilon:.4g} after it); client {self._client_id!r} does not train "
                "it again: a second noisy release would spend privacy a second time",
                run_id=run_id,
                round=round,
            )
        self._pending = (run_id, session, round)

    def mark_lost(self, *, run_id: str, session: str, resumed_after: int) -> list[LedgerEntry]:
        """Mark the rounds of ``run_id`` the coordinator lost; return the newly marked ones.

        A coordinator that resumed after round ``resumed_after`` in session ``session``
        never completed any later round it asked for in an earlier session: those entries
        (same run, another session, ``round > resumed_after``) become ``lost``. They stay
        in the history and in epsilon.

        Raises:
            InvalidPrivacyParameterError: an empty run id or session, or a negative round.
        """
        _check_id(run_id, name="run_id", allow_empty=False)
        _check_id(session, name="session", allow_empty=False)
        if isinstance(resumed_after, bool) or not isinstance(resumed_after, int):
            raise InvalidPrivacyParameterError(
                f"resumed_after must be an integer >= 0; got {resumed_after!r}"
            )
        if resumed_after < 0:
            raise InvalidPrivacyParameterError(
                f"resumed_after must be an integer >= 0; got {resumed_after!r}"
            )
        marked: list[LedgerEntry] = []
        for i, e in enumerate(self._entries):
            if (
                e.run_id == run_id
                and not e.lost
                and e.session != session
                and e.round > resumed_after
            ):
                self._entries[i] = replace(e, lost=True)
                marked.append(self._entries[i])
        if marked:
            logger.warning(
                "client %s: run %s resumed after round %d; round(s) %s it charged were "
                "lost by the coordinator (still counted in epsilon)",
                self._client_id,
                run_id,
                resumed_after,
                ", ".join(str(e.round) for e in marked),
            )
        return marked

    def record(self, *, round: int, event: DpSgdEvent | Sequence[float]) -> LedgerEntry:
        """Commit a round that ran; return its entry with the cumulative epsilon.

        Recording never refuses: once noisy gradients were computed the privacy is spent.
        Check the budget with :meth:`check` (and claim the round with
        :meth:`start_round`) first. The entry carries the run id and session claimed by
        :meth:`start_round` for this round, if any.

        Raises:
            InvalidPrivacyParameterError: a bad event or round number.

        Round numbers restart at 1 in every federated run, so a node that takes part in
        several runs records ..., 5, 1, 2, ...: entries are ordered by time, and ``round``
        is informational. (Rejecting that here would throw away a round whose noise was
        already released, and lock an agent out of every later run.)
        """
        ev = check_event(event, where="round event")
        if isinstance(round, bool) or not isinstance(round, int) or round < 1:
            raise InvalidPrivacyParameterError(f"round must be an integer >= 1; got {round!r}")
        eps = epsilon_from_history(
            [*self.history, ev], delta=self._delta, accountant=self._accountant
        )
        run_id, session = "", ""
        if self._pending is not None and self._pending[2] == round:
            run_id, session, _ = self._pending
        self._pending = None
        entry = LedgerEntry(
            round=round,
            noise_multiplier=ev.noise_multiplier,
            sample_rate=ev.sample_rate,
            steps=ev.steps,
            epsilon=eps,
            delta=self._delta,
            accountant=self._accountant,
            run_id=run_id,
            session=session,
        )
        self._entries.append(entry)
        self._cache[(len(self._entries), self._delta, self._accountant)] = eps
        logger.info(
            "client %s round %d: epsilon=%.4f delta=%g sigma=%.4f q=%.4g steps=%d (%s)",
            self._client_id,
            round,
            eps,
            self._delta,
            ev.noise_multiplier,
            ev.sample_rate,
            ev.steps,
            self._accountant,
        )
        return entry

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able form (format tag and version included)."""
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "client_id": self._client_id,
            "delta": self._delta,
            "accountant": self._accountant,
            "budget_epsilon": self._budget,
            "exhausted": self._exhausted,
            "entries": [e.to_dict() for e in self._entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        """Inverse of :meth:`to_dict`.

        Raises:
            LedgerError: wrong format tag or version, missing keys, or bad values.
        """
        if not isinstance(data, Mapping):
            raise LedgerError(f"ledger must be a JSON object; got {type(data).__name__}")
        version = data.get("version")
        if (
            data.get("format") != LEDGER_FORMAT
            or isinstance(version, bool)
            or version not in READABLE_VERSIONS
        ):
            raise LedgerError(
                f"ledger must have format {LEDGER_FORMAT!r} version "
                f"{' or '.join(str(v) for v in READABLE_VERSIONS)}; got {data.get('format')!r} "
                f"version {version!r}"
            )
        raw_entries = data.get("entries")
        if not isinstance(raw_entries, list):
            raise LedgerError(f"ledger entries must be a list; got {raw_entries!r}")
        entries = [
            LedgerEntry.from_dict(e) if isinstance(e, Mapping) else _bad_entry(e)
            for e in raw_entries
        ]
        exhausted = data.get("exhausted", False)
        if not isinstance(exhausted, bool):
            raise LedgerError(f"ledger exhausted must be true or false; got {exhausted!r}")
        try:
            return cls(
                client_id=data["client_id"],
                delta=data["delta"],
                accountant=data["accountant"],
                budget_epsilon=data.get("budget_epsilon"),
                entries=entries,
                exhausted=exhausted,
            )
        except KeyError as err:
            raise LedgerError(f"ledger must have {err.args[0]!r}") from err
        except InvalidPrivacyParameterError as err:
            raise LedgerError(f"ledger header is invalid: {err}") from err

    def to_json(self) -> str:
        """Serialise to a JSON string (for ``Context.state`` / a ``ConfigRecord``)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "ledger JSON") -> PrivacyLedger:
        """Parse :meth:`to_json` output; ``source`` names the origin in error messages.

        Raises:
            LedgerError: not JSON, or not a valid ledger.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LedgerError(f"{source} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except LedgerError as err:
            raise LedgerError(f"{source}: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write the ledger atomically: temp file in the same directory, fsync, replace.

        A crash leaves either the old or the new file, never a torn one.

        Raises:
            LedgerError: the directory is not writable.
        """
        p = Path(path)
        text = json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"
        try:
            atomic_write(p, text)
        except OSError as err:
            raise LedgerError(f"ledger file {str(p)!r} cannot be written: {err}") from err
        return p

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """Read a ledger written by :meth:`save`.

        Raises:
            LedgerError: naming the file, if it is missing, unreadable or corrupt.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LedgerError(f"ledger file {str(p)!r} cannot be read: {err}") from err
        return cls.from_json(text, source=f"ledger file {str(p)!r}")

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        client_id: str,
        delta: float,
        accountant: str = "rdp",
        budget_epsilon: float | None = None,
    ) -> PrivacyLedger:
        """Continue the ledger at ``path``, or start a new one if no file exists.

        The stored history is always kept. The current config's delta, accountant and
        budget apply from now on (epsilon is recomputed from the history, so a changed
        delta is stated correctly); a different ``client_id`` is an error.

        Raises:
            LedgerError: the file exists but is corrupt, or belongs to another client; or
                the path is a link that cannot be followed (dangling, a loop): never read
                as "no ledger yet", which would restart epsilon at 0.
        """
        p = Path(path)
        if not _present(p):
            return cls(
                client_id=client_id,
                delta=delta,
                accountant=accountant,
                budget_epsilon=budget_epsilon,
            )
        stored = cls.load(p)
        if stored.client_id != client_id:
            raise LedgerError(
                f"ledger file {str(p)!r} belongs to client {stored.client_id!r}, not {client_id!r}"
            )
        ledger = cls(
            client_id=client_id,
            delta=delta,
            accountant=accountant,
            budget_epsilon=budget_epsilon,
            entries=stored.entries,
            exhausted=stored.exhausted,
        )
        if (
            ledger.exhausted
            and budget_epsilon is not None
            and (stored.budget_epsilon is None or budget_epsilon > stored.budget_epsilon)
        ):
            # A raised budget lets an exhausted client train again; the history stays.
            ledger._exhausted = False
        logger.info(
            "client %s: continuing ledger %s with %d rounds (epsilon %.4f)",
            client_id,
            p,
            len(ledger),
            ledger.epsilon(),
        )
        return ledger


def _present(path: Path) -> bool:
    """Whether ``path`` is there at all; a link that cannot be followed counts as there.

    ``Path.exists()`` follows links and is False for a dangling one or a loop: a ledger
    reached through a link to storage that is not mounted would read as a new, empty
    ledger. Such a path is "present" here, and :meth:`PrivacyLedger.load` then fails.
    """
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise LedgerError(f"ledger file {str(path)!r} cannot be read: {err}") from err
    return True


def _check_id(value: object, *, name: str, allow_empty: bool) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_ID_CHARS
        or (not value and not allow_empty)
        or not value.isprintable()
    ):
        need = "" if allow_empty else "non-empty "
        raise InvalidPrivacyParameterError(
            f"{name} must be a {need}printable string of <= {MAX_ID_CHARS} characters; "
            f"got {str(value)[:80]!r}"
        )
    return value


def _bad_entry(value: object) -> LedgerEntry:
    raise LedgerError(f"ledger entry must be an object; got {value!r}")


def epsilon_tolerance(epsilon: float, *, accountant: str = "rdp") -> float:
    """How far a recomputed cumulative epsilon may sit below ``epsilon`` and still agree.

    RDP is exact up to float rounding (relative 1e-6); PRV composes numerically with
    Opacus' ``eps_error = 0.01`` (Gopi et al. 2021), so it gets that much more.
    """
    return 1e-6 * max(1.0, epsilon) + (0.01 if accountant == "prv" else 0.0)


def max_epsilon(ledgers: Iterable[PrivacyLedger]) -> float:
    """Return the largest cumulative epsilon among ``ledgers`` (0.0 if none)."""
    values = [ledger.epsilon() for ledger in ledgers]
    return max(values) if values else 0.0


__all__ = [
    "LEDGER_FORMAT",
    "LEDGER_VERSION",
    "READABLE_VERSIONS",
    "LedgerEntry",
    "PrivacyLedger",
    "epsilon_tolerance",
    "max_epsilon",
]
