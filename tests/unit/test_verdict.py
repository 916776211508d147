"""fedai.verdict: when a finished run failed, and the one line that says why."""

from __future__ import annotations

from typing import Any

from fedai.errors import EXIT_FAILED, EXIT_OK, DataError, InvalidPrivacyParameterError
from fedai.results import RoundRecord, RunSummary
from fedai.verdict import FAILED_TAIL, ClientErrors, describe, judge


def record(round_: int, status: str = "ok", **fields: Any) -> RoundRecord:
    acc = 0.5 if status == "ok" else None
    return RoundRecord(round=round_, accuracy=acc, loss=acc, seconds=0.1, status=status, **fields)


def summary(*records: RoundRecord, stop_reason: str = "") -> RunSummary:
    return RunSummary(config={}, rounds=list(records), stop_reason=stop_reason)


def test_all_rounds_accepted_is_ok() -> None:
    v = judge(summary(record(1), record(2)), planned_rounds=2, num_clients=3)
    assert (v.status, v.exit_code, v.reason) == ("ok", EXIT_OK, "")


def test_no_accepted_round_fails_with_the_clients_deduplicated_reason() -> None:
    reason = "train failed: InvalidPrivacyParameterError (details in the node's log)"
    failures = {"0": reason, "1": reason, "2": reason}
    s = summary(record(1, "failed", failures=failures), record(2, "failed", failures=failures))
    v = judge(s, planned_rounds=2, num_clients=3)
    assert v.exit_code == EXIT_FAILED
    assert v.reason == f"no round was accepted (2 of 2 failed): 3 of 3 clients: {reason}"


def test_clients_own_errors_win_over_reply_reasons() -> None:
    errors = ClientErrors()
    for cid in ("0", "1", "2"):
        errors.add(cid, "train", InvalidPrivacyParameterError("secure_mode=true needs torchcsprng"))
    s = summary(record(1, "failed", failures={"0": "train failed: X"}))
    v = judge(s, planned_rounds=1, num_clients=10, errors=errors)
    assert v.reason.endswith(": 3 of 10 clients: secure_mode=true needs torchcsprng")


def test_errors_that_differ_only_in_numbers_count_once() -> None:
    errors = ClientErrors()
    errors.add("0", "decode", DataError("values must be within +-100; got 14856.4"))
    errors.add("1", "decode", DataError("values must be within +-100; got 2e+07"))
    errors.add("1", "train", ValueError("other"))
    assert errors.counts() == [
        ("values must be within +-100; got 14856.4", 2),
        ("ValueError: other", 1),
    ]
    assert errors.summary(num_clients=2) == (
        "2 of 2 clients: values must be within +-100; got 14856.4 (and 1 other error)"
    )


def test_last_rounds_failed_fails_even_after_an_accepted_round() -> None:
    tail = [
        record(r, "failed", trained=["0"], reason="aggregate failed the bounds check")
        for r in range(2, 2 + FAILED_TAIL)
    ]
    v = judge(summary(record(1), *tail), planned_rounds=1 + FAILED_TAIL, num_clients=3)
    assert v.failed
    assert v.reason == f"the last {FAILED_TAIL} rounds failed: aggregate failed the bounds check"


def test_a_failed_round_among_accepted_ones_is_ok() -> None:
    s = summary(record(1), record(2, "failed", reason="x"), record(3))
    assert not judge(s, planned_rounds=3, num_clients=3).failed


def test_skipped_rounds_do_not_count_towards_the_tail() -> None:
    rounds = [
        record(1),
        record(2, "failed", reason="x"),
        record(3, "skipped"),
        record(4, "failed", reason="x"),
    ]
    assert not judge(summary(*rounds), planned_rounds=4, num_clients=3).failed


def test_stopping_early_fails_with_the_stop_reason() -> None:
    s = summary(record(1), record(2), stop_reason="no client can train: every budget is exhausted")
    v = judge(s, planned_rounds=5, num_clients=3)
    assert v.reason == "stopped after round 2 of 5: no client can train: every budget is exhausted"


def test_refusals_name_the_refusal() -> None:
    s = summary(record(1, "failed", refused={"0": "budget 1 would be exceeded"}))
    v = judge(s, planned_rounds=1, num_clients=1)
    assert (
        v.reason
        == "no round was accepted (1 of 1 failed): 1 of 1 client: budget 1 would be exceeded"
    )


def test_describe_is_one_line_and_names_foreign_types() -> None:
    assert describe(ValueError("a\nb")) == "ValueError: a"
    assert describe(DataError("x " * 400)).endswith("...")
    assert len(describe(DataError("x " * 400))) == 400
