"""A node never trains from a ledger that holds less than the run already saw of it.

The node compares its ledger with the coordinator's checkpointed view (rounds of the run
it saw charged, the epsilon last reported) and with its own high-water mark on disk; a
lower claim changes nothing, a higher one makes it refuse. The node decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from clients.privacy import LEDGER_MARK_FILE, LedgerStore, RunRef, report
from fedai.config import ExperimentConfig
from fedai.errors import LedgerContinuityError, LedgerError, ProtocolError
from fedai.federation import keys
from fedai.privacy.accounting import DpSgdEvent
from fedai.privacy.ledger import PrivacyLedger, epsilon_tolerance

EVENT = DpSgdEvent(1.0, 0.05, 40)
RUN = "run-a"
N = 100


def ledger_with(rounds: int, *, run_id: str = RUN, client_id: str = "3") -> PrivacyLedger:
    led = PrivacyLedger(client_id=client_id, delta=1e-5)
    for r in range(1, rounds + 1):
        led.start_round(run_id=run_id, round=r, session="s1")
        led.record(round=r, event=EVENT)
    return led


def cfg() -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {"privacy": {"mode": "local", "noise_multiplier": 1.0, "delta": 1e-5}}
    )


def store_in(tmp_path: Path, client_id: str = "3") -> LedgerStore:
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": int(client_id), "state-dir": str(tmp_path)},
        state=RecordDict(),
        run_config={},
    )
    return LedgerStore(context, client_id)


def view(charges: int, epsilon: float, *, run_id: str = RUN) -> RunRef:
    return RunRef(run_id, "s2", 0, charges, epsilon)


# ---------------------------------------------------------------------- the comparison
@pytest.mark.parametrize(("charges", "fraction"), [(0, 0.0), (2, 0.5), (4, 1.0)])
def test_a_view_at_or_below_the_ledger_changes_nothing(charges: int, fraction: float) -> None:
    led = ledger_with(4)
    led.check_continuity(run_id=RUN, seen_charges=charges, seen_epsilon=led.epsilon() * fraction)
    assert len(led) == 4


def test_an_epsilon_within_float_tolerance_is_not_a_drop() -> None:
    led = ledger_with(4)
    eps = led.epsilon()
    led.check_continuity(run_id=RUN, seen_charges=4, seen_epsilon=eps + 0.5e-6 * eps)
    assert epsilon_tolerance(eps) < 1e-4
    assert epsilon_tolerance(eps, accountant="prv") > 0.01


def test_an_empty_ledger_under_a_view_of_4_charges_refuses_naming_client_ledger_and_view() -> None:
    led = PrivacyLedger(client_id="3", delta=1e-5)
    with pytest.raises(LedgerContinuityError) as caught:
        led.check_continuity(
            run_id=RUN, seen_charges=4, seen_epsilon=5.318, source="ledger ledger-3.json"
        )
    message = str(caught.value)
    assert message.startswith(
        "client 3: ledger ledger-3.json holds 0 charged round(s) of run run-a"
    )
    assert "the coordinator's checkpoint recorded 4 (epsilon 5.318)" in message
    assert message.endswith("the ledger was lost or replaced; refusing to train from zero")
    assert caught.value.client_id == "3"


def test_an_older_copy_of_the_ledger_refuses() -> None:
    led = ledger_with(2)
    with pytest.raises(LedgerContinuityError, match="holds 2 charged round"):
        led.check_continuity(run_id=RUN, seen_charges=4, seen_epsilon=ledger_with(4).epsilon())


def test_a_higher_epsilon_alone_refuses() -> None:
    led = ledger_with(4)
    with pytest.raises(LedgerContinuityError, match="recorded 4"):
        led.check_continuity(run_id=RUN, seen_charges=4, seen_epsilon=led.epsilon() * 1.01)


def test_charges_of_another_run_do_not_count_for_this_one() -> None:
    led = ledger_with(6, run_id="an-earlier-run")
    assert led.charges_in(RUN) == 0
    with pytest.raises(LedgerContinuityError, match="holds 0 charged round"):
        led.check_continuity(run_id=RUN, seen_charges=1, seen_epsilon=0.0)


# ---------------------------------------------------------------------- the train message
def test_the_view_is_read_from_the_train_message() -> None:
    config = {keys.KEY_RUN_ID: RUN, keys.KEY_SEEN_CHARGES: 4, keys.KEY_SEEN_EPSILON: 5.318}
    assert RunRef.from_config(config, round_=5) == RunRef(RUN, "", 0, 4, 5.318)
    assert RunRef.from_config({keys.KEY_RUN_ID: RUN}, round_=5) == RunRef(RUN, "", 0, 0, 0.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (keys.KEY_SEEN_CHARGES, -1),
        (keys.KEY_SEEN_CHARGES, 2.5),
        (keys.KEY_SEEN_CHARGES, True),
        (keys.KEY_SEEN_EPSILON, -0.1),
        (keys.KEY_SEEN_EPSILON, float("nan")),
        (keys.KEY_SEEN_EPSILON, "5"),
    ],
)
def test_a_malformed_view_is_a_protocol_error(key: str, value: object) -> None:
    with pytest.raises(ProtocolError, match=key):
        RunRef.from_config({keys.KEY_RUN_ID: RUN, key: value}, round_=5)


def test_the_report_counts_the_rounds_charged_in_the_named_run() -> None:
    led = ledger_with(3)
    assert json.loads(report(led, noise_multiplier=1.0, run_id=RUN))["run_rounds"] == 3
    assert json.loads(report(led, noise_multiplier=1.0, run_id="other"))["run_rounds"] == 0
    assert "run_rounds" not in json.loads(report(led, noise_multiplier=1.0))


# ---------------------------------------------------------------------- the node's store
def test_a_lost_ledger_file_under_the_coordinators_view_refuses_and_writes_nothing(
    tmp_path: Path,
) -> None:
    # Arrange: no ledger file, no mark; the coordinator saw 4 charges
    store = store_in(tmp_path)
    # Act / Assert
    with pytest.raises(LedgerContinuityError, match=r"client 3: ledger ledger-3\.json holds 0"):
        store.open(cfg(), num_samples=N, budget_epsilon=None, run=view(4, 5.318))
    assert list(tmp_path.iterdir()) == []


def test_a_lower_view_opens_the_ledger_as_it_is(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.path is not None
    ledger_with(4).save(store.path)
    opened = store.open(cfg(), num_samples=N, budget_epsilon=None, run=view(1, 0.5))
    assert len(opened) == 4


def test_saving_raises_the_mark_and_a_missing_ledger_is_then_refused_without_a_view(
    tmp_path: Path,
) -> None:
    # Arrange: the node saved a ledger of 4 rounds; then only the ledger file is lost
    store = store_in(tmp_path)
    assert store.path is not None
    store.save(ledger_with(4))
    mark = tmp_path / LEDGER_MARK_FILE.format(client_id="3")
    assert json.loads(mark.read_text())["entries"] == 4
    store.path.unlink()
    # Act / Assert: a new run (the coordinator has no view of this ledger) cannot reset it
    with pytest.raises(LedgerContinuityError) as caught:
        store_in(tmp_path).open(cfg(), num_samples=N, budget_epsilon=None, run=view(0, 0.0))
    assert str(caught.value).startswith(
        "client 3: ledger ledger-3.json is missing but its mark ledger-3.mark records 4"
    )
    assert not store.path.exists()


def test_an_older_ledger_than_its_mark_is_refused(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.path is not None
    store.save(ledger_with(4))
    ledger_with(2).save(store.path)  # an old backup copied back
    with pytest.raises(LedgerContinuityError, match="holds 2 round"):
        store_in(tmp_path).open(cfg(), num_samples=N, budget_epsilon=None)


def test_removing_ledger_and_mark_is_the_operators_way_to_start_over(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.path is not None
    assert store.mark_path is not None
    store.save(ledger_with(4))
    store.path.unlink()
    store.mark_path.unlink()
    assert len(store_in(tmp_path).open(cfg(), num_samples=N, budget_epsilon=None)) == 0


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"format": "fedai.ledger-mark", "client_id": "3", "entries": -1}',
        '{"format": "fedai.ledger-mark", "client_id": "4", "entries": 1}',
        '{"format": "other", "client_id": "3", "entries": 1}',
        "[1]",
    ],
)
def test_a_corrupt_or_foreign_mark_is_an_error_never_no_mark(tmp_path: Path, text: str) -> None:
    (tmp_path / LEDGER_MARK_FILE.format(client_id="3")).write_text(text)
    with pytest.raises(LedgerError, match="ledger mark"):
        store_in(tmp_path).open(cfg(), num_samples=N, budget_epsilon=None)


def test_a_ledger_in_context_state_is_checked_against_the_view_too() -> None:
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 3}, state=RecordDict(), run_config={}
    )
    with pytest.raises(LedgerContinuityError, match=r"ledger in Context\.state holds 0"):
        LedgerStore(context, "3").open(cfg(), num_samples=N, budget_epsilon=None, run=view(2, 1.0))
