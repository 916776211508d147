"""Config values that cannot work (seed range) or would have no effect are refused at load."""

from __future__ import annotations

from typing import Any

import pytest

from fedai.config import MAX_SEED, ExperimentConfig
from fedai.errors import ConfigError


def load(**sections: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(sections)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 10**20])
def test_seed_outside_int64_range_is_refused(seed: int) -> None:
    with pytest.raises(ConfigError, match=r"experiment\.seed must be in \[0, 2\*\*63 - 1\]"):
        load(experiment={"seed": seed})


@pytest.mark.parametrize("seed", [0, 2**32, MAX_SEED])
def test_seed_in_range_is_accepted(seed: int) -> None:
    assert load(experiment={"seed": seed}).experiment.seed == seed


def test_seed_override_beyond_int64_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"experiment\.seed must be"):
        ExperimentConfig.load(None, ["experiment.seed=99999999999999999999"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("noise_multiplier", 1.0),
        ("target_epsilon", 3.0),
        ("budget_epsilon", 8.0),
        ("max_grad_norm", 2.0),
        ("accountant", "prv"),
        ("secure_mode", True),
    ],
)
def test_dp_sgd_settings_without_dp_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"privacy\.{key} applies only when privacy\.mode"):
        load(privacy={key: value})


def test_settings_user_level_plans_read_stay_allowed_without_dp() -> None:
    # `fedai privacy plan --population ...` reads these whatever the mode
    cfg = load(privacy={"delta": 1e-6, "user_noise_multiplier": 2.0, "user_clipping_norm": 0.5})
    assert cfg.privacy.mode == "none"


@pytest.mark.parametrize(
    ("key", "value"),
    [("partition", "iid"), ("alpha", 0.1), ("shards_per_client", 3), ("min_samples", 5)],
)
def test_partition_settings_with_synthetic_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key} applies only to a pooled data set"):
        load(data={"dataset": "synthetic", key: value})


def test_synthetic_settings_with_another_dataset_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"data\.synthetic_dim applies only to data\.dataset"):
        load(data={"synthetic_dim": 20})


def test_alpha_needs_dirichlet_and_shards_need_shards() -> None:
    with pytest.raises(ConfigError, match=r"data\.alpha applies only to data\.partition"):
        load(data={"partition": "iid", "alpha": 0.1})
    with pytest.raises(ConfigError, match=r"data\.shards_per_client applies only"):
        load(data={"partition": "iid", "shards_per_client": 4})
    assert load(data={"partition": "shards", "shards_per_client": 4}).data.shards_per_client == 4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("key_dir", "keys"),
        ("flood_sigma", 0.1),
        ("quantization_bits", 16),
        ("max_total_weight", 1000),
        ("workers", 1),
    ],
)
def test_secure_settings_without_a_scheme_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"secure_aggregation\.{key} applies only to a secure"):
        load(secure_aggregation={key: value})


def test_defaults_written_out_are_not_set() -> None:
    # A config that spells out every default (as to_json does for the clients) loads.
    cfg = load(privacy={"mode": "none"})
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg
    dp = load(privacy={"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 2.0})
    assert ExperimentConfig.from_json(dp.to_json()) == dp
    explicit = load(data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5})
    assert explicit.data.alpha == 0.5
