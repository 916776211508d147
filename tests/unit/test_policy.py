"""NodePolicy: read from node_config; a request may narrow it, never widen it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.errors import ConfigError
from fedai.policy import SCHEMES, NodePolicy
from fedai.schemes import scheme_names


def cfg(**sections: dict[str, object]) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(sections)


def test_simulation_node_config_allows_what_the_experiment_asks() -> None:
    policy = NodePolicy.from_node_config({"partition-id": 0, "num-partitions": 4})

    assert policy == NodePolicy()
    assert (
        policy.violations(
            cfg(privacy={"mode": "local", "noise_multiplier": 1.0, "budget_epsilon": 100.0})
        )
        == []
    )
    assert policy.budget(None) is None


@pytest.mark.parametrize(
    ("scheme", "params"), [("ckks", {}), ("paillier", {"key_bits": 1024, "force": True})]
)
def test_a_key_dir_requires_its_scheme(
    tmp_path: Path, scheme: str, params: dict[str, object]
) -> None:
    create_keys(tmp_path, scheme=scheme, **params)
    policy = NodePolicy.from_node_config({"key-dir": str(tmp_path)})

    (reason,) = policy.violations(cfg(secure_aggregation={"scheme": "none"}))

    assert policy.require_scheme == scheme
    assert f"secure_aggregation.scheme must be {scheme!r} (node policy)" in reason
    assert "asked for 'none'" in reason


def test_a_key_dir_without_keys_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key-dir must hold a key set"):
        NodePolicy.from_node_config({"key-dir": str(tmp_path)})


def test_policy_schemes_come_from_the_registry() -> None:
    policy = NodePolicy.from_node_config({"require-scheme": "paillier"})

    (reason,) = policy.violations(cfg(secure_aggregation={"scheme": "none"}))

    assert scheme_names() == SCHEMES
    assert "secure_aggregation.scheme must be 'paillier' (node policy)" in reason


def test_own_data_with_dp_needs_a_state_dir() -> None:
    node = {"data-path": "/data.csv"}
    dp = cfg(privacy={"mode": "local", "noise_multiplier": 1.0})

    (reason,) = NodePolicy.from_node_config(node).violations(dp)

    assert "must set 'state-dir'" in reason
    assert NodePolicy.from_node_config({**node, "state-dir": "/s"}).violations(dp) == []
    assert NodePolicy.from_node_config(node).violations(cfg()) == []  # no DP, no ledger


def test_budget_cap_narrows_and_refuses_widening() -> None:
    policy = NodePolicy.from_node_config({"max-budget-epsilon": "4"})

    assert policy.budget(None) == 4.0
    assert policy.budget(2.0) == 2.0
    (reason,) = policy.violations(
        cfg(privacy={"mode": "local", "noise_multiplier": 1.0, "budget_epsilon": 8.0})
    )
    assert "budget_epsilon must be <= 4 (node policy); the coordinator asked for 8" in reason


def test_required_privacy_and_num_sampled() -> None:
    policy = NodePolicy.from_node_config({"require-privacy": "local", "max-num-sampled": 5})
    user = cfg(privacy={"mode": "local+user", "noise_multiplier": 1.0})

    assert "privacy.mode must be one of" in policy.violations(cfg())[0]
    assert policy.violations(user, num_sampled=5) == []
    assert "num-sampled must be <= 5" in policy.violations(user, num_sampled=6)[0]


def test_sigma_floor_and_round_epsilon_cap() -> None:
    policy = NodePolicy.from_node_config(
        {"min-noise-multiplier": 1.0, "max-epsilon-per-round": "0.5"}
    )

    assert policy.sigma_violation(1.0) is None
    assert "noise_multiplier must be >= 1" in (policy.sigma_violation(0.9) or "")
    assert policy.round_epsilon_violation(0.5) is None
    assert "epsilon per round must be <= 0.5" in (policy.round_epsilon_violation(0.6) or "")


@pytest.mark.parametrize(
    ("node", "needle"),
    [
        ({"require-scheme": "rot13"}, "require-scheme must be one of"),
        ({"key-dir": "/k", "require-scheme": "none"}, "must not be 'none'"),
        ({"min-noise-multiplier": "-1"}, "min-noise-multiplier must be a number > 0"),
        ({"max-budget-epsilon": "nan"}, "max-budget-epsilon must be a number > 0"),
        ({"max-num-sampled": "2.5"}, "max-num-sampled must be an integer"),
        ({"require-privacy": "some"}, "require-privacy must be one of"),
    ],
)
def test_a_bad_policy_is_a_config_error(node: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        NodePolicy.from_node_config(node)
