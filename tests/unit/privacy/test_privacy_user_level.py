"""User-level DP: clipping, distributed noise, and amplified accounting."""

from __future__ import annotations

import numpy as np
import pytest

from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import DpSgdEvent, epsilon_from_history
from fedai.privacy.ledger import PrivacyLedger
from fedai.privacy.statement import UserLevelSetting, privacy_statement
from fedai.privacy.user_level import (
    calibrate_user_noise_multiplier,
    clip_and_noise,
    clip_update,
    distributed_noise_std,
    effective_noise_multiplier,
    global_l2_norm,
    user_level_epsilon,
)

REFERENCE = {
    "population": 100,
    "clients_per_round": 10,
    "noise_multiplier": 1.0,
    "rounds": 100,
    "delta": 1e-5,
}


def test_reference_rdp_is_7_90() -> None:
    # The reference setting of user_level_epsilon's docstring (McMahan et al. 2018 shape).
    assert user_level_epsilon(**REFERENCE, accountant="rdp") == pytest.approx(7.90, rel=0.01)


def test_reference_pld_is_7_05() -> None:
    assert user_level_epsilon(**REFERENCE, accountant="pld") == pytest.approx(7.05, rel=0.01)


def test_reference_prv_is_7_05() -> None:
    assert user_level_epsilon(**REFERENCE, accountant="prv") == pytest.approx(7.05, rel=0.01)


@pytest.mark.parametrize(
    ("population", "per_round", "rounds"), [(1000, 100, 500), (10_000, 100, 1000)]
)
def test_dp_accounting_agrees_with_opacus(population: int, per_round: int, rounds: int) -> None:
    ours = user_level_epsilon(
        population=population,
        clients_per_round=per_round,
        noise_multiplier=1.0,
        rounds=rounds,
        delta=1e-5,
    )
    opacus = epsilon_from_history(
        [DpSgdEvent(1.0, per_round / population, rounds)], delta=1e-5, accountant="rdp"
    )
    assert ours == pytest.approx(opacus, rel=0.01)


def test_amplification_matters() -> None:
    sampled = user_level_epsilon(**REFERENCE)
    everyone = user_level_epsilon(**{**REFERENCE, "clients_per_round": 100})
    assert everyone > 10 * sampled


def test_calibrated_user_sigma_meets_target() -> None:
    sigma = calibrate_user_noise_multiplier(
        target_epsilon=4.0, population=100, clients_per_round=10, rounds=100, delta=1e-5
    )
    eps = user_level_epsilon(**{**REFERENCE, "noise_multiplier": sigma})
    assert 3.95 < eps <= 4.0
    assert sigma > 1.0


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"clients_per_round": 101}, "clients_per_round"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"rounds": 0}, "rounds"),
        ({"delta": 1.0}, "delta"),
        ({"delta": 0.0}, "delta"),
    ],
)
def test_bad_user_level_parameters(override: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match=match):
        user_level_epsilon(**{**REFERENCE, **override})


def test_clip_bounds_norm_and_keeps_direction_without_mutating() -> None:
    update = [np.full((3, 4), 2.0, dtype=np.float32), np.array([-6.0, 0.5])]
    copy = [a.copy() for a in update]
    clipped, norm = clip_update(update, clipping_norm=1.5)
    assert norm == pytest.approx(global_l2_norm(copy))
    assert global_l2_norm(clipped) == pytest.approx(1.5)
    for a, b in zip(clipped, copy, strict=True):
        np.testing.assert_allclose(a, b * (1.5 / norm))
    for a, b in zip(update, copy, strict=True):
        np.testing.assert_array_equal(a, b)


def test_small_and_zero_updates_pass_through() -> None:
    zero = [np.zeros(5)]
    clipped, norm = clip_update(zero, clipping_norm=1.0)
    assert norm == 0.0
    np.testing.assert_array_equal(clipped[0], zero[0])
    small = [np.array([0.1, 0.2])]
    np.testing.assert_array_equal(clip_update(small, clipping_norm=1.0)[0][0], small[0])


@pytest.mark.parametrize("norm", [0.0, -1.0])
def test_bad_clipping_norm(norm: float) -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="clipping_norm"):
        clip_update([np.ones(3)], clipping_norm=norm)


def test_non_finite_update_is_rejected() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="finite"):
        clip_update([np.array([1.0, np.nan])], clipping_norm=1.0)


def test_clip_and_noise_is_seeded_and_does_not_mutate() -> None:
    update = [np.ones((2, 2)) * 3.0]
    a = clip_and_noise(
        update,
        clipping_norm=1.0,
        noise_multiplier=1.0,
        num_sampled_clients=4,
        rng=np.random.default_rng(7),
    )
    b = clip_and_noise(
        update,
        clipping_norm=1.0,
        noise_multiplier=1.0,
        num_sampled_clients=4,
        rng=np.random.default_rng(7),
    )
    np.testing.assert_array_equal(a.update[0], b.update[0])
    np.testing.assert_array_equal(update[0], np.ones((2, 2)) * 3.0)
    assert a.clipped
    assert a.noise_std == pytest.approx(0.5)
    assert a.norm == pytest.approx(6.0)


def test_effective_noise_multiplier_when_clients_drop() -> None:
    assert (
        effective_noise_multiplier(noise_multiplier=1.0, expected_clients=10, actual_clients=10)
        == 1.0
    )
    assert effective_noise_multiplier(
        noise_multiplier=1.0, expected_clients=10, actual_clients=5
    ) == pytest.approx(0.5**0.5)
    with pytest.raises(InvalidPrivacyParameterError, match="actual_clients"):
        effective_noise_multiplier(noise_multiplier=1.0, expected_clients=10, actual_clients=11)


@pytest.mark.slow
def test_distributed_shares_sum_to_sigma_c() -> None:
    # m clients each add their share to a zero update; the sum must carry std sigma*C.
    rng = np.random.default_rng(2024)
    m, sigma, c, dim = 10, 1.3, 0.7, 200_000
    total = np.zeros(dim)
    for _ in range(m):
        total += clip_and_noise(
            [np.zeros(dim)], clipping_norm=c, noise_multiplier=sigma, num_sampled_clients=m, rng=rng
        ).update[0]
    assert float(np.std(total)) == pytest.approx(sigma * c, rel=0.01)
    assert abs(float(np.mean(total))) < 0.01
    assert distributed_noise_std(
        noise_multiplier=sigma, clipping_norm=c, num_sampled_clients=m
    ) == pytest.approx(sigma * c / m**0.5)


def test_privacy_statement_reports_both_levels() -> None:
    a = PrivacyLedger(client_id="a", delta=1e-5)
    a.record(round=1, event=DpSgdEvent(1.0, 0.05, 40))
    b = PrivacyLedger(client_id="b", delta=1e-5)
    b.record(round=1, event=DpSgdEvent(1.0, 0.5, 8))
    statement = privacy_statement(ledgers=[a, b], user_level=UserLevelSetting(**REFERENCE))
    clients = statement["sample_level"]["clients"]
    assert clients["b"]["epsilon"] > clients["a"]["epsilon"]
    assert statement["sample_level"]["max_epsilon"] == clients["b"]["epsilon"]
    assert statement["user_level"]["epsilon_rdp"] == pytest.approx(7.90, rel=0.01)
    assert statement["user_level"]["epsilon_pld"] == pytest.approx(7.05, rel=0.01)
    assert "client b" in statement["text"]
    none = privacy_statement()
    assert none["sample_level"] is None
    assert none["user_level"] is None
