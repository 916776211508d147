"""The coordinator never accepts a privacy report below what it already saw of that client.

A ledger never loses entries and its epsilon only grows: a report with a lower cumulative
epsilon, fewer rounds, or fewer charged rounds of this run than the coordinator counted,
comes from a ledger that was lost or replaced (:func:`server.rounds._report_drop`).
"""

from __future__ import annotations

from typing import Any

import pytest

from server.rounds import _report_drop

BEFORE = {"epsilon": 5.318, "rounds_trained": 4, "run_rounds": 4, "accountant": "rdp"}


def report(**values: Any) -> dict[str, Any]:
    return {**BEFORE, **values}


@pytest.mark.parametrize(
    "now",
    [
        report(),  # the same figures (a refusal, or already charged)
        report(epsilon=6.0, rounds_trained=5, run_rounds=5),  # one round more
        report(epsilon=5.318 * (1 - 1e-7)),  # float noise
    ],
)
def test_figures_at_or_above_the_view_are_no_drop(now: dict[str, Any]) -> None:
    assert _report_drop(now, BEFORE, charges=4) is None


def test_a_first_report_is_no_drop() -> None:
    assert (
        _report_drop(report(epsilon=1.0, rounds_trained=1, run_rounds=1), None, charges=1) is None
    )


def test_the_audited_reset_is_a_drop_naming_both_figures() -> None:
    # The audit: 5.318 after 4 rounds, then 3.578 after 1 round of a fresh ledger
    now = report(epsilon=3.578, rounds_trained=1, run_rounds=1)
    reason = _report_drop(now, BEFORE, charges=5)
    assert reason is not None
    assert "epsilon 3.578 below its earlier 5.318" in reason
    assert "1 round(s) trained, below its earlier 4" in reason
    assert "1 charged round(s) of this run, below the 5 seen" in reason


def test_fewer_charges_than_the_coordinator_counted_is_a_drop_even_at_equal_epsilon() -> None:
    # A reset ledger that caught up in epsilon still holds fewer charges of the run.
    reason = _report_drop(report(epsilon=5.4, run_rounds=4), BEFORE, charges=8)
    assert reason == (
        "privacy report fell below the coordinator's view (4 charged round(s) of this run, "
        "below the 8 seen)"
    )


def test_a_report_without_run_rounds_is_judged_on_epsilon_and_rounds() -> None:
    now = {k: v for k, v in report(epsilon=5.5, rounds_trained=5).items() if k != "run_rounds"}
    assert _report_drop(now, BEFORE, charges=9) is None
    assert _report_drop({**now, "epsilon": 1.0}, BEFORE, charges=9) is not None


def test_prv_gets_its_numerical_tolerance() -> None:
    prv = {**BEFORE, "accountant": "prv"}
    assert _report_drop(report(epsilon=5.318 - 0.005), prv, charges=4) is None
    assert _report_drop(report(epsilon=5.318 - 0.05), prv, charges=4) is not None
