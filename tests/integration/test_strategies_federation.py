"""Strategies on a running federation: CKKS equals the clear run, with and without DP.

Server optimisers run on the coordinator in the clear and on the sampled evaluators under
CKKS (see :mod:`server.strategy`); both must end at the same model bit for bit. Also:
sampled evaluation with a final all-client evaluation, and stragglers.

Under Paillier the clients quantise to another grid (``update_bound / Q``, stochastic
rounding from OS entropy) than the clear run's ``10**-round_decimals``, so the two runs
cannot agree bit for bit; after one round (same starting model, same local training) they
differ by at most the two grids' rounding, times the strategy's sensitivity to its input
average (1 for FedAvg, ``server_lr * (1 - beta1) / tau`` for a first FedAdam step). Over
several rounds the runs' starting models differ and local training and the adaptive step
carry the difference on (measured, 3 rounds of this config: FedAvg 8.8e-7, FedAdam
1.8e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.app import app as client_app
from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.federation.inprocess import run_inprocess
from fedai.models import build_model
from fedai.schemes import client_codec
from server.app import build_server_app
from server.rounds import RunOutcome

pytestmark = pytest.mark.integration


def config(name: str, scheme: str, key_dir: Path, **extra: Any) -> ExperimentConfig:
    strategy: dict[str, Any] = {"name": name, "evaluate_clients": 2}
    if name == "fedprox":
        strategy["proximal_mu"] = 0.5
    mapping: dict[str, Any] = {
        "experiment": {"rounds": 3, "num_clients": 4, "clients_per_round": 3, "seed": 3},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 32},
        "strategy": strategy,
        "secure_aggregation": {
            "scheme": scheme,
            "key_dir": str(key_dir) if scheme != "none" else "",
        },
    }
    for section, values in extra.items():
        mapping.setdefault(section, {}).update(values)
    return ExperimentConfig.from_mapping(mapping)


def run(cfg: ExperimentConfig) -> RunOutcome:
    outcomes: list[RunOutcome] = []
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        client_app,
        num_supernodes=cfg.experiment.num_clients,
    )
    return outcomes[0]


def final_model(cfg: ExperimentConfig, outcome: RunOutcome) -> list[np.ndarray]:
    assert outcome.payload is not None
    shapes = [tuple(v.shape) for v in build_model(outcome.spec).state_dict().values()]
    codec = client_codec(cfg.secure_aggregation)
    return codec.decode(outcome.payload, outcome.total_weight, shapes)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    create_keys(out)
    return out


@pytest.fixture(scope="module")
def paillier_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paillier-keys")
    create_keys(out, scheme="paillier", key_bits=2048)  # 2048: the minimum, for speed
    return out


@pytest.mark.parametrize("name", ["fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_ckks_run_equals_the_clear_run_bit_for_bit(name: str, key_dir: Path) -> None:
    # Act
    clear_cfg = config(name, "none", key_dir)
    ckks_cfg = config(name, "ckks", key_dir)
    clear, ckks = run(clear_cfg), run(ckks_cfg)

    # Assert: every round accepted, same model bit for bit, sampled + final evaluation
    assert [r.status for r in clear.summary.rounds] == ["ok"] * 3
    assert [r.status for r in ckks.summary.rounds] == ["ok"] * 3
    a, b = final_model(clear_cfg, clear), final_model(ckks_cfg, ckks)
    # the same grid values; the plain codec returns float32, CKKS float64: compare as the
    # model holds them
    assert all(
        np.array_equal(x.astype(np.float32), y.astype(np.float32))
        for x, y in zip(a, b, strict=True)
    )
    assert ckks.summary.final_evaluation["clients"] == 4
    assert clear.summary.final_evaluation["accuracy"] == ckks.summary.final_evaluation["accuracy"]
    if name != "fedprox":
        assert ckks.state is not None
        assert clear.state is not None


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_paillier_run_equals_the_clear_run_within_the_grids(
    name: str, paillier_key_dir: Path
) -> None:
    # Arrange: one round, so both runs start from the same model and train identically
    overrides = {"experiment": {"rounds": 1}}
    clear_cfg = config(name, "none", paillier_key_dir, **overrides)
    paillier_cfg = config(name, "paillier", paillier_key_dir, **overrides)
    codec = client_codec(paillier_cfg.secure_aggregation)
    paillier_step = codec.update_bound / codec.layout.levels  # type: ignore[attr-defined]
    clear_half_step = 0.5 * 10.0**-clear_cfg.secure_aggregation.round_decimals
    st = paillier_cfg.strategy
    # FedAvg's new model is the average itself; FedAdam's first step moves by
    # server_lr * 0.1 d / (0.1 |d| + tau) (m = 0.1 d, sqrt(v) = 0.1 |d|), whose slope is at
    # most server_lr * (1 - beta1) / tau, and its result is rounded onto each grid again
    sensitivity, rounded_again = (
        (1.0, 0) if name == "fedavg" else (st.effective_server_lr * (1 - st.beta1) / st.tau, 1)
    )

    # Act
    clear, paillier = run(clear_cfg), run(paillier_cfg)

    # Assert: the average differs by <= one rounding on each grid, the step multiplies that
    # by its sensitivity (plus a rounding of its result); the clear codec hands out float32
    assert [r.status for r in clear.summary.rounds] == ["ok"]
    assert [r.status for r in paillier.summary.rounds] == ["ok"]
    a, b = final_model(clear_cfg, clear), final_model(paillier_cfg, paillier)
    largest = max(float(np.max(np.abs(x))) for x in a)
    grids = clear_half_step + paillier_step
    bound = (sensitivity + rounded_again) * grids + largest * float(np.finfo(np.float32).eps)
    diff = max(
        float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        for x, y in zip(a, b, strict=True)
    )
    print(f"{name}: max abs difference {diff:.3g} (bound {bound:.3g})")
    assert diff <= bound
    assert paillier.summary.final_evaluation["clients"] == 4


@pytest.mark.parametrize("name", ["fedprox", "fedadam"])
def test_strategies_run_with_local_dp_and_stragglers_under_ckks(name: str, key_dir: Path) -> None:
    cfg = config(
        name,
        "ckks",
        key_dir,
        privacy={"mode": "local", "noise_multiplier": 1.0, "grad_sample_mode": "fused"},
        strategy={"straggler_fraction": 0.67},
    )
    outcome = run(cfg)
    assert [r.status for r in outcome.summary.rounds] == ["ok"] * 3
    # a straggler's ledger records fewer steps than a full round (64 examples / 32 = 2+)
    steps = [
        entry[-1]
        for report in outcome.summary.rounds[-1].privacy["clients"].values()
        for entry in report["history"]
    ]
    assert min(steps) < max(steps)
    assert final_model(cfg, outcome)


def test_dropped_stragglers_do_not_train() -> None:
    cfg = config(
        "fedavg", "none", Path(), strategy={"straggler_fraction": 0.34, "drop_stragglers": True}
    )
    outcome = run(cfg)
    for r in outcome.summary.rounds:
        dropped = [c for c, why in r.failures.items() if "straggler dropped" in why]
        assert len(dropped) == 1
        assert dropped[0] not in r.trained
