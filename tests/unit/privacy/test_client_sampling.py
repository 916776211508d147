"""Client sampling for user-level DP and the accounting that matches it.

Every epsilon here is checked against Google dp-accounting composed directly in the test
(never through fedai), for the audit's setting: 100 clients, 10 a round, sigma 1, 100
rounds, delta 1e-5.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from fedai.config import ExperimentConfig
from fedai.errors import ConfigError, InvalidPrivacyParameterError
from fedai.privacy.accounting import resolve_user_delta
from fedai.privacy.client_sampling import (
    UserLevelAccountant,
    UserLevelRound,
    fixed_size_sample,
    participation_rounds_bound,
    poisson_sample,
)
from fedai.privacy.plan import plan_config
from fedai.privacy.statement import UserLevelSetting, user_level_report
from fedai.privacy.user_level import participation_known_epsilon, user_level_epsilon
from server.rounds import ClientInfo, FederatedRun

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's fractional-order notes

N, M, SIGMA, T, DELTA = 100, 10, 1.0, 100, 1e-5
Q = M / N
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


# ---------------------------------------------------------------------- independent
def independent_poisson(accountant: Any, sigmas: list[float], q: float) -> float:
    # equal rounds composed by count (dp-accounting's own compose(event, count))
    for sigma, count in Counter(sigmas).items():
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count
        )
    return float(accountant.get_epsilon(DELTA))


def independent_gaussians(accountant: Any, sigmas: list[float]) -> float:
    for sigma, count in Counter(sigmas).items():
        accountant.compose(dp_accounting.GaussianDpEvent(sigma), count)
    return float(accountant.get_epsilon(DELTA))


def independent_fixed(rounds: int, *, n: int, m: int, sigma: float) -> float:
    accountant = RdpAccountant(neighboring_relation=REPLACE_ONE)
    # replace-one moves the sum of clipped updates by up to 2C: multiplier sigma / 2
    accountant.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(
            n, m, dp_accounting.GaussianDpEvent(sigma / 2)
        ),
        rounds,
    )
    return float(accountant.get_epsilon(DELTA))


def full_rounds(sampling: str, rounds: int) -> UserLevelAccountant:
    """The coordinator's accountant after ``rounds`` full rounds; client c joins every 10th."""
    acc = UserLevelAccountant(
        client_sampling=sampling, delta=DELTA, population=N, clients_per_round=M
    )
    for r in range(1, rounds + 1):
        acc.compose(
            UserLevelRound.observed(
                round=r,
                client_sampling=sampling,
                noise_multiplier=SIGMA,
                sample_rate=Q,
                population=N,
                sampled=M,
                contributed=M,
            ),
            participants=[str((r % 10) * 10 + i) for i in range(M)],
        )
    return acc


# ---------------------------------------------------------------------- Poisson figures
def test_poisson_plan_matches_dp_accounting_for_both_adversaries() -> None:
    # Arrange
    setting = UserLevelSetting(
        population=N, clients_per_round=M, noise_multiplier=SIGMA, rounds=T, delta=DELTA
    )

    # Act
    report = user_level_report(setting)

    # Assert: outsiders (amplified) 7.90 RDP / 7.05 PLD
    outsiders = report["against_outsiders"]
    rdp = independent_poisson(RdpAccountant(), [SIGMA] * T, Q)
    pld = independent_poisson(PLDAccountant(), [SIGMA] * T, Q)
    assert outsiders["epsilon_rdp"] == pytest.approx(rdp, rel=0.01)
    assert outsiders["epsilon_pld"] == pytest.approx(pld, rel=0.01)
    assert outsiders["epsilon_rdp"] == pytest.approx(7.90, rel=0.01)
    assert outsiders["epsilon_pld"] == pytest.approx(7.05, rel=0.01)
    assert "q=0.1" in outsiders["assumption"]
    assert "OS entropy" in outsiders["assumption"]
    # participation known (no amplification), a client in the expected 10 rounds: the
    # audit's 17.9 (PLD)
    known = report["participation_known"]
    assert known["rounds"] == 10
    assert known["epsilon_rdp"] == pytest.approx(
        independent_gaussians(RdpAccountant(), [SIGMA] * 10), rel=0.01
    )
    assert known["epsilon_pld"] == pytest.approx(
        independent_gaussians(PLDAccountant(), [SIGMA] * 10), rel=0.01
    )
    assert known["epsilon_pld"] == pytest.approx(17.9, rel=0.01)
    assert known["rounds_max"] == 23  # Binomial(100, 0.1), union bound over 100 clients
    assert known["epsilon_rdp_max"] == pytest.approx(
        independent_gaussians(RdpAccountant(), [SIGMA] * 23), rel=0.01
    )
    assert report["epsilon_rdp"] < known["epsilon_rdp"] < known["epsilon_rdp_max"]


def test_the_coordinators_poisson_accountant_matches_dp_accounting() -> None:
    # Act: what results.json reports after 100 full rounds, each client in 10 of them
    acc = full_rounds("poisson", T)
    report = acc.report()

    # Assert
    assert report["epsilon"] == report["against_outsiders"]["epsilon"]
    assert report["epsilon"] == pytest.approx(
        independent_poisson(RdpAccountant(), [SIGMA] * T, Q), rel=0.01
    )
    assert report["epsilon"] == pytest.approx(7.90, rel=0.01)
    known = report["participation_known"]
    assert known["rounds"] == 10
    assert known["epsilon"] == pytest.approx(
        independent_gaussians(RdpAccountant(), [SIGMA] * 10), rel=0.01
    )
    assert set(known["clients"]) == {str(c) for c in range(N)}
    assert "coordinator_sees_updates" not in report


def test_a_round_with_dropouts_is_accounted_at_the_sigma_its_sum_carried() -> None:
    # Arrange: 8 drawn, 6 contributed -> the sum carries sigma sqrt(6/8)
    acc = UserLevelAccountant(
        client_sampling="poisson",
        delta=DELTA,
        population=N,
        clients_per_round=M,
        coordinator_sees_updates=True,
    )
    rounds = [(8, 6), (12, 12), (0, 0)]  # the last: Poisson drew nobody

    # Act
    for r, (sampled, contributed) in enumerate(rounds, start=1):
        acc.compose(
            UserLevelRound.observed(
                round=r,
                client_sampling="poisson",
                noise_multiplier=SIGMA,
                sample_rate=Q,
                population=N,
                sampled=sampled,
                contributed=contributed,
            ),
            participants=[f"c{i}" for i in range(contributed)],
        )
    report = acc.report()

    # Assert
    sigmas = [SIGMA * (6 / 8) ** 0.5, SIGMA, SIGMA]  # nothing summed: a full round
    assert [h.noise_multiplier for h in acc.history] == pytest.approx(sigmas)
    assert report["epsilon"] == pytest.approx(
        independent_poisson(RdpAccountant(), sigmas, Q), rel=0.01
    )
    known = report["participation_known"]["clients"]
    assert known["c0"]["rounds"] == 2
    assert known["c0"]["epsilon"] == pytest.approx(
        independent_gaussians(RdpAccountant(), sigmas[:2]), rel=0.01
    )
    assert known["c7"]["epsilon"] == pytest.approx(
        independent_gaussians(RdpAccountant(), sigmas[1:2]), rel=0.01
    )
    # without secure aggregation the coordinator sees each update with its own share
    seen = report["coordinator_sees_updates"]["clients"]["c0"]["epsilon"]
    assert seen == pytest.approx(
        independent_gaussians(RdpAccountant(), [SIGMA / 8**0.5, SIGMA / 12**0.5]), rel=0.01
    )


# ---------------------------------------------------------------------- fixed-size figures
def test_fixed_size_accounting_matches_dp_accounting_replace_one() -> None:
    # Act
    planned = user_level_epsilon(
        population=N,
        clients_per_round=M,
        noise_multiplier=SIGMA,
        rounds=T,
        delta=DELTA,
        client_sampling="fixed",
    )
    reported = full_rounds("fixed", T).report()

    # Assert: the audit's 83.9 (sensitivity 2C), not the Poisson 7.90
    independent = independent_fixed(T, n=N, m=M, sigma=SIGMA)
    assert planned == pytest.approx(independent, rel=0.01)
    assert planned == pytest.approx(83.9, rel=0.01)
    assert reported["epsilon"] == pytest.approx(independent, rel=0.01)
    assert "replace one" in reported["against_outsiders"]["neighbouring_relation"]
    # participation known under the same relation: Gaussian(sigma / 2) per round taken part
    known = reported["participation_known"]
    assert known["epsilon"] == pytest.approx(
        independent_gaussians(RdpAccountant(), [SIGMA / 2] * 10), rel=0.01
    )


def test_fixed_size_plan_has_no_pld_and_says_why() -> None:
    report = user_level_report(
        UserLevelSetting(
            population=N,
            clients_per_round=M,
            noise_multiplier=SIGMA,
            rounds=T,
            delta=DELTA,
            client_sampling="fixed",
        )
    )
    assert report["epsilon_pld"] is None
    assert "without-replacement" in report["against_outsiders"]["pld_unavailable"]
    with pytest.raises(InvalidPrivacyParameterError, match="accountant must be rdp for fixed"):
        user_level_epsilon(
            population=N,
            clients_per_round=M,
            noise_multiplier=SIGMA,
            rounds=T,
            delta=DELTA,
            accountant="pld",
            client_sampling="fixed",
        )


def test_participation_known_epsilon_is_one_gaussian_of_the_combined_precision() -> None:
    sigmas = [1.0, 0.8, 1.5, 1.0]
    for sampling, scale in (("poisson", 1.0), ("fixed", 0.5)):
        ours = participation_known_epsilon(sigmas, delta=DELTA, client_sampling=sampling)
        theirs = independent_gaussians(RdpAccountant(), [s * scale for s in sigmas])
        assert ours == pytest.approx(theirs, rel=1e-6)
    assert participation_known_epsilon([], delta=DELTA) == 0.0


# ---------------------------------------------------------------------- sampling
def test_poisson_sample_joins_each_client_with_probability_q() -> None:
    rng = np.random.default_rng(11)
    counts = np.zeros(N)
    sizes = []
    for _ in range(2000):
        picked = poisson_sample(N, sample_rate=Q, rng=rng)
        assert picked == sorted(set(picked))
        counts[picked] += 1
        sizes.append(len(picked))
    assert np.mean(sizes) == pytest.approx(N * Q, rel=0.02)
    assert np.std(sizes) > 2  # the count varies (Binomial(100, 0.1): sd 3)
    assert counts.min() > 0.07 * 2000
    assert counts.max() < 0.13 * 2000


def test_fixed_size_sample_draws_exactly_m_distinct_clients() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        picked = fixed_size_sample(N, sample_size=M, rng=rng)
        assert len(set(picked)) == M
        assert all(0 <= i < N for i in picked)
    assert fixed_size_sample(4, sample_size=M, rng=rng) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampled": 11, "contributed": 3}, "contributed <= sampled <= population"),
        ({"sampled": 3, "contributed": 4}, "contributed <= sampled <= population"),
        ({"noise_multiplier": 0.0}, "noise_multiplier must be a finite number > 0"),
        ({"sample_rate": 1.5}, r"sample_rate must be in \(0, 1\]"),
        ({"client_sampling": "uniform"}, "client_sampling must be one of poisson, fixed"),
    ],
)
def test_bad_rounds_are_refused(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {
        "round": 1,
        "client_sampling": "poisson",
        "sample_rate": 0.5,
        "population": 10,
        "sampled": 5,
        "contributed": 5,
        "noise_multiplier": 1.0,
        "share_noise_multiplier": 0.5,
    }
    with pytest.raises(InvalidPrivacyParameterError, match=match):
        UserLevelRound(**{**base, **kwargs})


# ---------------------------------------------------------------------- the coordinator
def coordinator(
    mode: str,
    *,
    sampling: str | None = None,
    rng_factory: Callable[[], np.random.Generator] | None = None,
) -> FederatedRun:
    privacy: dict[str, Any] = {"mode": mode}
    if mode != "none":
        privacy["noise_multiplier"] = 1.0
    if sampling is not None:
        privacy["client_sampling"] = sampling
    cfg = ExperimentConfig.from_mapping(
        {"experiment": {"seed": 5, "num_clients": N, "clients_per_round": M}, "privacy": privacy}
    )
    extra = {} if rng_factory is None else {"rng_factory": rng_factory}
    return FederatedRun(cfg, grid=None, summer=None, **extra)  # type: ignore[arg-type]


CLIENTS = {1000 + i: ClientInfo(1000 + i, f"c{i:03d}", 50, 10, (8,), 2) for i in range(N)}


def draws(run: FederatedRun, rounds: int = 5) -> list[list[int]]:
    return [run.sample(CLIENTS, r) for r in range(1, rounds + 1)]


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_user_level_samples_are_secret_from_the_seed(sampling: str) -> None:
    # Act: two coordinators with the same config and seed
    first = draws(coordinator("local+user", sampling=sampling))
    second = draws(coordinator("local+user", sampling=sampling))

    # Assert
    assert first != second  # OS entropy: equal with probability < 1e-60
    if sampling == "fixed":
        assert all(len(d) == M for d in first + second)
    seeded = draws(coordinator("local"))
    assert first != seeded


def test_user_level_sampling_draws_from_the_injected_generator_only() -> None:
    one = coordinator("local+user", rng_factory=lambda: np.random.default_rng(9))
    two = coordinator("local+user", rng_factory=lambda: np.random.default_rng(9))
    assert draws(one) == draws(two)


@pytest.mark.parametrize("mode", ["none", "local"])
def test_runs_without_user_level_dp_stay_reproducible_from_the_seed(mode: str) -> None:
    # Act
    first, second = draws(coordinator(mode)), draws(coordinator(mode))

    # Assert: identical, exactly clients_per_round, and today's seeded draw
    assert first == second
    assert all(len(d) == M for d in first)
    rng = np.random.default_rng([5, 1])
    expected = sorted(int(j) for j in rng.choice(N, size=M, replace=False))
    assert first[0] == [1000 + i for i in expected]


def test_exhausted_clients_are_never_drawn() -> None:
    clients = {
        nid: ClientInfo(c.node_id, c.client_id, 50, 10, (8,), 2) for nid, c in CLIENTS.items()
    }
    for nid in list(clients)[:90]:
        clients[nid].exhausted = "budget"
    run = coordinator("local+user", sampling="fixed")
    for r in range(1, 4):
        assert sorted(run.sample(clients, r)) == list(clients)[90:]


# ---------------------------------------------------------------------- config and delta
def test_client_sampling_is_a_local_plus_user_key() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.client_sampling applies only when"):
        ExperimentConfig.from_mapping(
            {"privacy": {"mode": "local", "noise_multiplier": 1.0, "client_sampling": "poisson"}}
        )
    with pytest.raises(ConfigError, match=r"privacy\.client_sampling must be one of 'poisson'"):
        ExperimentConfig.from_mapping(
            {"privacy": {"mode": "local+user", "noise_multiplier": 1.0, "client_sampling": "x"}}
        )
    user = ExperimentConfig.from_mapping(
        {"privacy": {"mode": "local+user", "noise_multiplier": 1.0}}
    )
    assert user.privacy.user_client_sampling == "poisson"
    assert ExperimentConfig().privacy.user_client_sampling is None


def test_plan_and_coordinator_resolve_the_same_user_delta_above_10000_clients() -> None:
    # Arrange: delta unset, 20,000 clients
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 5, "num_clients": 20_000, "clients_per_round": 200},
            "privacy": {"mode": "local+user", "noise_multiplier": 1.0},
        }
    )

    # Act
    planned = plan_config(cfg, client_sizes=[100])["user_level"]["delta"]
    run = FederatedRun(cfg, grid=None, summer=None)  # type: ignore[arg-type]

    # Assert
    assert planned == resolve_user_delta(None, population=20_000) == pytest.approx(5e-6)
    assert run._user_accountant is not None
    assert run._user_accountant.delta == planned


def test_participation_rounds_bound() -> None:
    assert participation_rounds_bound(population=100, sample_rate=0.1, rounds=100) == 23
    assert participation_rounds_bound(population=100, sample_rate=1.0, rounds=7) == 7
    with pytest.raises(InvalidPrivacyParameterError, match="rounds must be an integer >= 1"):
        participation_rounds_bound(population=100, sample_rate=0.1, rounds=0)
