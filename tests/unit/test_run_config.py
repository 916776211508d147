"""Flower's run_config -> ExperimentConfig: every key settable, explicit values kept."""

import tomllib
from pathlib import Path

import pytest

from fedai.config import ExperimentConfig
from fedai.errors import ConfigError
from server.app import config_from_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _declared() -> dict:
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return dict(data["tool"]["flwr"]["app"]["config"])


def _fused(**overrides) -> dict:
    """What Flower hands the ServerApp: pyproject's defaults, overridden."""
    return {**_declared(), **overrides}


def test_pyproject_declares_every_experiment_key_with_its_default():
    # Arrange: fedai's defaults, flattened ("" where the default is unset)
    expected = {
        f"{section}.{key}": "" if value is None else value
        for section, values in ExperimentConfig().to_dict().items()
        for key, value in values.items()
    }
    # Act
    declared = _declared()
    # Assert: Flower refuses --run-config keys pyproject does not declare
    assert set(declared) == {*expected, "config-file", "output.dir"}
    assert {k: declared[k] for k in expected} == expected


def test_pyproject_defaults_alone_give_fedai_defaults():
    cfg, _out = config_from_run_config(_fused(), explicit={})
    assert cfg == ExperimentConfig()


def test_explicit_value_equal_to_default_overrides_config_file(tmp_path):
    # Arrange: a file with 5 rounds; the user asks for 20 (pyproject's default)
    toml = tmp_path / "exp.toml"
    toml.write_text("[experiment]\nrounds = 5\n[train]\nlr = 0.2\n", encoding="utf-8")
    explicit = {"config-file": str(toml), "experiment.rounds": 20}
    # Act
    cfg, _out = config_from_run_config(_fused(**explicit), explicit=explicit)
    # Assert: the explicit 20 wins, the file's lr stays, defaults do not override it
    assert cfg.experiment.rounds == 20
    assert cfg.train.lr == 0.2


def test_without_explicit_keys_only_values_differing_from_defaults_override(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text("[experiment]\nrounds = 5\n[train]\nlr = 0.2\n", encoding="utf-8")
    cfg, _out = config_from_run_config(
        _fused(**{"config-file": str(toml), "train.batch_size": 8}), explicit=None
    )
    assert (cfg.experiment.rounds, cfg.train.lr, cfg.train.batch_size) == (5, 0.2, 8)


def test_keys_without_a_pyproject_default_are_settable():
    explicit = {"privacy.mode": "local", "privacy.noise_multiplier": 1.3, "train.lr_decay": 0.9}
    cfg, _out = config_from_run_config(_fused(**explicit), explicit=explicit)
    assert cfg.privacy.noise_multiplier == 1.3
    assert cfg.train.lr_decay == 0.9


def test_unknown_key_is_named(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text("[experiment]\nrounds = 5\n", encoding="utf-8")
    explicit = {"config-file": str(toml), "train.learning_rate": 0.1}
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        config_from_run_config(_fused(**explicit), explicit=explicit)


def test_output_dir_is_split_off(tmp_path):
    _cfg, out = config_from_run_config(_fused(**{"output.dir": str(tmp_path)}), explicit={})
    assert out == tmp_path
