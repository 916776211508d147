"""The ledger across coordinator crashes: run ids, no double charge, lost rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedai.errors import InvalidPrivacyParameterError, LedgerError, RoundAlreadyChargedError
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon
from fedai.privacy.ledger import LEDGER_VERSION, PrivacyLedger

EVENT = DpSgdEvent(1.1, 0.05, 40)
RUN = "3f2a9c0d11aa22bb"


def ledger() -> PrivacyLedger:
    return PrivacyLedger(client_id="c7", delta=1e-5)


def charge(led: PrivacyLedger, *, run: str, session: str, round_: int) -> None:
    """What a client does for one train message: claim the round, train, record."""
    led.start_round(run_id=run, round=round_, session=session)
    led.record(round=round_, event=EVENT)


def charged(led: PrivacyLedger) -> list[tuple[str, str, int, bool]]:
    return [(e.run_id, e.session, e.round, e.lost) for e in led.entries]


# ---------------------------------------------------------------------- double charge
def test_a_round_of_a_run_is_never_charged_twice() -> None:
    # Arrange
    led = ledger()
    charge(led, run=RUN, session="s1", round_=1)
    charge(led, run=RUN, session="s1", round_=2)
    # Act / Assert: the resumed coordinator re-sends round 2
    with pytest.raises(RoundAlreadyChargedError, match=f"round 2 of run {RUN} already charged"):
        led.start_round(run_id=RUN, round=2, session="s2")
    assert len(led) == 2
    assert charged(led) == [(RUN, "s1", 1, False), (RUN, "s1", 2, False)]


def test_the_refusal_names_run_and_round_and_keeps_the_ledger_usable() -> None:
    led = ledger()
    charge(led, run=RUN, session="s1", round_=3)
    with pytest.raises(RoundAlreadyChargedError) as info:
        led.start_round(run_id=RUN, round=3, session="s2")
    assert (info.value.run_id, info.value.round) == (RUN, 3)
    assert not led.exhausted  # a refused duplicate is not a budget refusal
    charge(led, run=RUN, session="s2", round_=4)  # the next round trains normally
    assert [e.round for e in led.entries] == [3, 4]


def test_the_same_round_number_of_another_run_is_a_new_charge() -> None:
    led = ledger()
    charge(led, run=RUN, session="s1", round_=1)
    charge(led, run="another-run", session="t1", round_=1)
    assert charged(led) == [(RUN, "s1", 1, False), ("another-run", "t1", 1, False)]


def test_a_record_without_a_claim_has_no_run_and_never_blocks_a_run() -> None:
    # Arrange: a version-1 style entry (no run known) for round 1
    led = ledger()
    led.record(round=1, event=EVENT)
    # Act: a run's round 1 is claimed
    led.start_round(run_id=RUN, round=1, session="s1")
    entry = led.record(round=1, event=EVENT)
    # Assert
    assert (led.entries[0].run_id, entry.run_id, entry.session) == ("", RUN, "s1")


@pytest.mark.parametrize("run_id", ["", "x" * 65, "bad\nid", 7])
def test_a_bad_run_id_is_refused(run_id: object) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="run_id must be"):
        ledger().start_round(run_id=run_id, round=1, session="s")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- lost rounds
def test_rounds_after_the_resume_point_of_an_earlier_session_are_marked_lost() -> None:
    # Arrange: session s1 completed rounds 1-2 at the coordinator, charged 3, then crashed
    led = ledger()
    for r in (1, 2, 3):
        charge(led, run=RUN, session="s1", round_=r)
    charge(led, run="other", session="o1", round_=3)
    # Act: the coordinator restarts as s2, resumed after round 2
    marked = led.mark_lost(run_id=RUN, session="s2", resumed_after=2)
    again = led.mark_lost(run_id=RUN, session="s2", resumed_after=2)
    # Assert
    assert [(e.run_id, e.round) for e in marked] == [(RUN, 3)]
    assert again == []
    assert charged(led) == [
        (RUN, "s1", 1, False),
        (RUN, "s1", 2, False),
        (RUN, "s1", 3, True),
        ("other", "o1", 3, False),
    ]
    assert [e.round for e in led.lost] == [3]


def test_several_resumes_mark_exactly_the_rounds_each_crash_lost() -> None:
    led = ledger()
    for r in (1, 2, 3):
        charge(led, run=RUN, session="s1", round_=r)
    led.mark_lost(run_id=RUN, session="s2", resumed_after=2)  # s1 lost round 3
    with pytest.raises(RoundAlreadyChargedError):
        led.start_round(run_id=RUN, round=3, session="s2")  # not charged again
    for r in (4, 5):
        charge(led, run=RUN, session="s2", round_=r)
    # the coordinator of s2 completed round 4, charged 5, crashed; s3 resumes after 4
    led.mark_lost(run_id=RUN, session="s3", resumed_after=4)
    # messages of the running session never mark its own rounds
    led.mark_lost(run_id=RUN, session="s3", resumed_after=4)
    assert [(e.round, e.lost) for e in led.entries] == [
        (1, False),
        (2, False),
        (3, True),
        (4, False),
        (5, True),
    ]


def test_lost_rounds_stay_in_epsilon_as_dp_accounting_computes_it() -> None:
    # Arrange
    led = ledger()
    for r in (1, 2, 3):
        charge(led, run=RUN, session="s1", round_=r)
    before = led.epsilon()
    # Act
    led.mark_lost(run_id=RUN, session="s2", resumed_after=1)
    # Assert: two rounds lost, three events spent; Google dp-accounting agrees
    assert len(led.lost) == 2
    assert led.epsilon() == before
    independent = dp_accounting_epsilon([EVENT] * 3, delta=1e-5, accountant="rdp")
    assert led.epsilon() == pytest.approx(independent, rel=0.01)
    assert led.projected_epsilon(EVENT) > before


def test_mark_lost_checks_its_arguments() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="session must be"):
        ledger().mark_lost(run_id=RUN, session="", resumed_after=0)
    with pytest.raises(InvalidPrivacyParameterError, match="resumed_after must be"):
        ledger().mark_lost(run_id=RUN, session="s", resumed_after=-1)


# ---------------------------------------------------------------------- files
def test_run_ids_sessions_and_lost_marks_survive_save_and_load(tmp_path: Path) -> None:
    led = ledger()
    for r in (1, 2):
        charge(led, run=RUN, session="s1", round_=r)
    led.mark_lost(run_id=RUN, session="s2", resumed_after=1)
    path = led.save(tmp_path / "ledger.json")
    back = PrivacyLedger.load(path)
    assert charged(back) == charged(led) == [(RUN, "s1", 1, False), (RUN, "s1", 2, True)]
    assert json.loads(path.read_text())["version"] == LEDGER_VERSION == 2
    with pytest.raises(RoundAlreadyChargedError):
        back.start_round(run_id=RUN, round=2, session="s2")


def test_a_version_1_ledger_file_still_loads_with_its_history(tmp_path: Path) -> None:
    # Arrange: a file an agent wrote before run ids existed
    old = ledger()
    old.record(round=1, event=EVENT)
    data = old.to_dict()
    data["version"] = 1
    for e in data["entries"]:
        for key in ("run_id", "session", "lost"):
            del e[key]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    # Act
    back = PrivacyLedger.load(path)
    # Assert
    assert charged(back) == [("", "", 1, False)]
    assert back.epsilon() == pytest.approx(old.epsilon())


def test_a_malformed_lost_mark_is_a_ledger_error(tmp_path: Path) -> None:
    led = ledger()
    charge(led, run=RUN, session="s1", round_=1)
    data = led.to_dict()
    data["entries"][0]["lost"] = "yes"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="lost must be true or false"):
        PrivacyLedger.load(path)
