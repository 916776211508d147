"""target_epsilon plans the remaining budget from what the ledger already spent."""

from __future__ import annotations

import pytest

from fedai.errors import PrivacyBudgetExceededError
from fedai.privacy.accounting import (
    DpSgdEvent,
    calibrate_noise_multiplier,
    dp_accounting_epsilon,
)

DELTA, Q, STEPS_PER_ROUND, ROUNDS, TARGET = 1e-5, 0.1, 30, 10, 4.0


def test_a_consistent_history_keeps_the_planned_sigma() -> None:
    # Arrange: the sigma planned for all rounds, and 4 rounds already spent at it
    sigma0 = calibrate_noise_multiplier(
        target_epsilon=TARGET, delta=DELTA, sample_rate=Q, steps=STEPS_PER_ROUND * ROUNDS
    )
    spent = [DpSgdEvent(sigma0, Q, STEPS_PER_ROUND)] * 4

    # Act: plan the remaining 6 rounds
    sigma = calibrate_noise_multiplier(
        target_epsilon=TARGET, delta=DELTA, sample_rate=Q, steps=STEPS_PER_ROUND * 6, spent=spent
    )

    # Assert
    assert sigma == pytest.approx(sigma0, rel=0.02)


def test_spent_epsilon_is_not_planned_again() -> None:
    # Arrange: a previous run spent at a small sigma
    spent = [DpSgdEvent(2.5, Q, STEPS_PER_ROUND)] * 5  # epsilon about 2.2
    fresh = calibrate_noise_multiplier(
        target_epsilon=TARGET, delta=DELTA, sample_rate=Q, steps=STEPS_PER_ROUND * ROUNDS
    )

    # Act
    sigma = calibrate_noise_multiplier(
        target_epsilon=TARGET,
        delta=DELTA,
        sample_rate=Q,
        steps=STEPS_PER_ROUND * ROUNDS,
        spent=spent,
    )

    # Assert: more noise than ignoring the history, and the total lands at the target
    # by an independent accountant (dp-accounting's RDP)
    assert sigma > fresh
    total = dp_accounting_epsilon(
        [*spent, DpSgdEvent(sigma, Q, STEPS_PER_ROUND * ROUNDS)], delta=DELTA
    )
    assert TARGET - 0.05 <= total <= TARGET + 0.01
    ignoring = dp_accounting_epsilon(
        [*spent, DpSgdEvent(fresh, Q, STEPS_PER_ROUND * ROUNDS)], delta=DELTA
    )
    assert ignoring > TARGET + 0.5  # what planning without the history would have spent


def test_a_history_past_the_target_leaves_nothing() -> None:
    spent = [DpSgdEvent(0.5, 1.0, 100)]

    with pytest.raises(PrivacyBudgetExceededError, match="already reached"):
        calibrate_noise_multiplier(
            target_epsilon=TARGET, delta=DELTA, sample_rate=Q, steps=10, spent=spent
        )
