"""Accounting math: Opacus epsilon cross-checked against Google dp-accounting."""

from __future__ import annotations

import math

import pytest

from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import (
    DpSgdEvent,
    calibrate_noise_multiplier,
    dp_accounting_epsilon,
    epsilon_from_history,
    poisson_schedule,
    resolve_delta,
)

HISTORIES = [
    [DpSgdEvent(1.0, 1 / 23, 46)],
    [DpSgdEvent(1.0, 1 / 23, 46), DpSgdEvent(1.3, 1 / 23, 46), DpSgdEvent(0.8, 0.1, 20)],
    [DpSgdEvent(0.9, 0.58, 4)] * 5,
    [DpSgdEvent(2.0, 0.01, 1000)],
]


@pytest.mark.parametrize("history", HISTORIES)
def test_opacus_rdp_matches_dp_accounting_rdp(history: list[DpSgdEvent]) -> None:
    ours = epsilon_from_history(history, delta=1e-5, accountant="rdp")
    google = dp_accounting_epsilon(history, delta=1e-5, accountant="rdp")
    assert ours == pytest.approx(google, rel=0.01)


@pytest.mark.parametrize("history", HISTORIES[:2])
def test_opacus_prv_matches_dp_accounting_pld(history: list[DpSgdEvent]) -> None:
    ours = epsilon_from_history(history, delta=1e-5, accountant="prv")
    google = dp_accounting_epsilon(history, delta=1e-5, accountant="pld")
    assert ours == pytest.approx(google, rel=0.02)


def test_prv_is_tighter_than_rdp() -> None:
    history = HISTORIES[0]
    assert epsilon_from_history(history, delta=1e-5, accountant="prv") < epsilon_from_history(
        history, delta=1e-5, accountant="rdp"
    )


def test_empty_history_spends_nothing() -> None:
    assert epsilon_from_history([], delta=1e-5) == 0.0
    assert epsilon_from_history([DpSgdEvent(1.0, 0.1, 0)], delta=1e-5) == 0.0
    assert dp_accounting_epsilon([], delta=1e-5) == 0.0


def test_epsilon_grows_with_steps_and_shrinks_with_delta() -> None:
    short = epsilon_from_history([DpSgdEvent(1.0, 0.05, 10)], delta=1e-5)
    long = epsilon_from_history([DpSgdEvent(1.0, 0.05, 100)], delta=1e-5)
    loose = epsilon_from_history([DpSgdEvent(1.0, 0.05, 100)], delta=1e-3)
    assert short < long
    assert loose < long


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, math.nan])
def test_bad_delta_is_rejected(delta: float) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="delta must be in"):
        epsilon_from_history(HISTORIES[0], delta=delta)


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ((0.0, 0.1, 10), "noise_multiplier"),
        ((-1.0, 0.1, 10), "noise_multiplier"),
        ((1.0, 0.0, 10), "sample_rate"),
        ((1.0, 1.5, 10), "sample_rate"),
        ((1.0, 0.1, -1), "steps"),
        ((1.0, 0.1, 1.5), "steps"),
    ],
)
def test_bad_event_is_rejected(event: tuple[float, float, float], match: str) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match=match):
        epsilon_from_history([event], delta=1e-5)


def test_unknown_accountant_is_rejected() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="accountant"):
        epsilon_from_history(HISTORIES[0], delta=1e-5, accountant="gdp")


@pytest.mark.parametrize(
    ("q", "steps", "target"), [(1 / 23, 460, 8.0), (0.58, 40, 8.0), (0.1, 100, 2.0)]
)
def test_calibration_reaches_target_from_below(q: float, steps: int, target: float) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps
    )
    eps = epsilon_from_history([DpSgdEvent(sigma, q, steps)], delta=1e-5)
    assert eps <= target
    assert eps > target - 0.05
    # dp-accounting agrees the calibrated sigma stays within budget (within 1%).
    assert dp_accounting_epsilon([DpSgdEvent(sigma, q, steps)], delta=1e-5) <= target * 1.01


@pytest.mark.parametrize("target", [0.0, -1.0, math.inf])
def test_calibration_rejects_bad_target(target: float) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="target_epsilon"):
        calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=0.1, steps=10)


def test_calibration_rejects_zero_steps() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="steps"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=0)


@pytest.mark.parametrize(("n", "batch"), [(1437, 64), (55, 32), (93 * 8, 8), (5, 1), (10, 64)])
def test_poisson_schedule_matches_opacus_dataloader(n: int, batch: int) -> None:
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
    dp_loader = DPDataLoader.from_data_loader(loader)
    q, steps = poisson_schedule(num_samples=n, batch_size=batch)
    assert steps == len(dp_loader)
    assert q == pytest.approx(1 / len(dp_loader))  # what PrivacyEngine accounts at


def test_resolve_delta() -> None:
    assert resolve_delta(None) == 1e-5
    assert resolve_delta(None, num_samples=100) == 1e-5
    assert resolve_delta(None, num_samples=1_000_000) == pytest.approx(1e-7)
    assert resolve_delta(1e-6, num_samples=10) == 1e-6
    with pytest.raises(InvalidPrivacyParameterError, match="delta"):
        resolve_delta(0.0)
