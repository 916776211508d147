"""The ledger: per-round epsilon vs dp-accounting, persistence, restarts, budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedai.errors import InvalidPrivacyParameterError, LedgerError, PrivacyBudgetExceededError
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon
from fedai.privacy.ledger import PrivacyLedger

ROUNDS = [
    DpSgdEvent(1.1, 1 / 23, 46),
    DpSgdEvent(1.1, 1 / 23, 46),
    DpSgdEvent(0.9, 1 / 23, 23),
    DpSgdEvent(1.5, 0.5, 4),
    DpSgdEvent(1.1, 1 / 23, 92),
]


def _ledger(**kw: object) -> PrivacyLedger:
    args: dict[str, object] = {"client_id": "client-3", "delta": 1e-5}
    args.update(kw)
    return PrivacyLedger(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_after_each_round_matches_dp_accounting_rdp(accountant: str) -> None:
    # The key cross-check: what the ledger reports after every round equals Google
    # dp-accounting RDP recomputed from the ledger's own recorded history (same delta).
    ledger = _ledger(accountant=accountant)
    for rnd, event in enumerate(ROUNDS, start=1):
        entry = ledger.record(round=rnd, event=event)
        recorded = [e.event for e in ledger.entries]
        google_rdp = dp_accounting_epsilon(recorded, delta=ledger.delta, accountant="rdp")
        if accountant == "rdp":
            assert entry.epsilon == pytest.approx(google_rdp, rel=0.01)
        else:  # PRV is tighter than RDP, and agrees with dp-accounting's PLD
            assert entry.epsilon <= google_rdp
            google_pld = dp_accounting_epsilon(recorded, delta=ledger.delta, accountant="pld")
            assert entry.epsilon == pytest.approx(google_pld, rel=0.02)
        assert ledger.epsilon() == entry.epsilon
    eps = [e.epsilon for e in ledger.entries]
    assert eps == sorted(eps)  # cumulative, never per-round


def test_cumulative_not_per_round() -> None:
    ledger = _ledger()
    first = ledger.record(round=1, event=ROUNDS[0]).epsilon
    second = ledger.record(round=2, event=ROUNDS[0]).epsilon
    assert second > first * 1.1


def test_dict_and_json_roundtrip() -> None:
    ledger = _ledger(budget_epsilon=20.0, accountant="rdp")
    for rnd, event in enumerate(ROUNDS[:3], start=1):
        ledger.record(round=rnd, event=event)
    again = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.to_dict() == ledger.to_dict()
    assert PrivacyLedger.from_json(ledger.to_json()).epsilon() == pytest.approx(ledger.epsilon())


def test_restart_continues_history(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    uninterrupted = _ledger()
    agent = PrivacyLedger.open(path, client_id="client-3", delta=1e-5)
    for rnd, event in enumerate(ROUNDS, start=1):
        uninterrupted.record(round=rnd, event=event)
        agent.record(round=rnd, event=event)
        agent.save(path)
        # the agent process dies and restarts: a brand-new object from disk
        agent = PrivacyLedger.open(path, client_id="client-3", delta=1e-5)
        assert len(agent) == rnd
    assert agent.epsilon() == pytest.approx(uninterrupted.epsilon())
    assert [e.event for e in agent.entries] == ROUNDS


def test_save_leaves_no_temp_files_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = _ledger()
    ledger.save(path)
    ledger.record(round=1, event=ROUNDS[0])
    ledger.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
    assert len(PrivacyLedger.load(path)) == 1


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    ledger = _ledger()
    ledger.record(round=1, event=ROUNDS[0])
    ledger.save(path)
    before = path.read_bytes()
    ledger.record(round=2, event=ROUNDS[1])

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LedgerError, match="cannot be written"):
        ledger.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "fedai.privacy-ledger", "version": 1, "entr',  # truncated write
        "",
        "[]",
        '{"format": "something-else", "version": 1}',
        json.dumps(
            {
                "format": "fedai.privacy-ledger",
                "version": 1,
                "client_id": "client-3",
                "delta": 1e-5,
                "accountant": "rdp",
                "entries": [
                    {
                        "round": 1,
                        "noise_multiplier": 1.0,
                        "sample_rate": 0.1,
                        "steps": -4,
                        "epsilon": 1.0,
                        "delta": 1e-5,
                        "accountant": "rdp",
                    }
                ],
            }
        ),
        json.dumps(
            {
                "format": "fedai.privacy-ledger",
                "version": 1,
                "client_id": "client-3",
                "delta": 0.0,
                "accountant": "rdp",
                "entries": [],
            }
        ),
    ],
)
def test_corrupt_file_raises_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LedgerError, match=r"ledger\.json"):
        PrivacyLedger.load(path)
    with pytest.raises(LedgerError, match=r"ledger\.json"):
        PrivacyLedger.open(path, client_id="client-3", delta=1e-5)
    assert path.read_text(encoding="utf-8") == content  # never silently reset


def test_missing_file_load_is_an_error_open_starts_fresh(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"nope\.json"):
        PrivacyLedger.load(tmp_path / "nope.json")
    fresh = PrivacyLedger.open(tmp_path / "nope.json", client_id="c", delta=1e-5)
    assert len(fresh) == 0
    assert fresh.epsilon() == 0.0


def test_ledger_of_another_client_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    _ledger().save(path)
    with pytest.raises(LedgerError, match="belongs to client"):
        PrivacyLedger.open(path, client_id="client-4", delta=1e-5)


def test_budget_refusal_is_a_dry_run_then_sticky(tmp_path: Path) -> None:
    ledger = _ledger(budget_epsilon=3.0)
    ledger.check(ROUNDS[0])
    ledger.record(round=1, event=ROUNDS[0])
    spent = ledger.epsilon()
    big = DpSgdEvent(0.7, 1 / 23, 500)
    assert ledger.would_exceed(big)
    assert not ledger.would_exceed(DpSgdEvent(50.0, 1 / 23, 1))
    with pytest.raises(PrivacyBudgetExceededError, match="budget_epsilon 3"):
        ledger.check(big)
    assert ledger.epsilon() == spent  # nothing committed
    assert len(ledger) == 1
    assert ledger.exhausted
    path = tmp_path / "ledger.json"
    ledger.save(path)
    reloaded = PrivacyLedger.open(path, client_id="client-3", delta=1e-5, budget_epsilon=3.0)
    with pytest.raises(PrivacyBudgetExceededError, match="exhausted"):
        reloaded.check(DpSgdEvent(50.0, 1 / 23, 1))
    raised = PrivacyLedger.open(path, client_id="client-3", delta=1e-5, budget_epsilon=30.0)
    assert not raised.exhausted
    assert len(raised) == 1


def test_record_accepts_a_new_run_restarting_at_round_1() -> None:
    # Round numbers restart per run; the history keeps growing, never resets.
    ledger = _ledger()
    ledger.record(round=3, event=ROUNDS[0])
    first = ledger.epsilon()
    ledger.record(round=1, event=ROUNDS[0])
    assert [e.round for e in ledger.entries] == [3, 1]
    assert ledger.epsilon() > first
    assert PrivacyLedger.from_json(ledger.to_json()).epsilon() == ledger.epsilon()
    with pytest.raises(InvalidPrivacyParameterError, match="round"):
        ledger.record(round=0, event=ROUNDS[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"budget_epsilon": 0.0}, "budget_epsilon"),
        ({"budget_epsilon": -2.0}, "budget_epsilon"),
        ({"accountant": "gdp"}, "accountant"),
        ({"client_id": ""}, "client_id"),
    ],
)
def test_bad_ledger_parameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match=match):
        _ledger(**kwargs)


def test_changed_delta_restates_epsilon_from_history(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = _ledger()
    ledger.record(round=1, event=ROUNDS[0])
    ledger.save(path)
    looser = PrivacyLedger.open(path, client_id="client-3", delta=1e-3)
    expected = dp_accounting_epsilon([ROUNDS[0]], delta=1e-3)
    assert looser.epsilon() == pytest.approx(expected, rel=0.01)
