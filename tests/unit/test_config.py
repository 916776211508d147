from pathlib import Path

import pytest

from fedai.cli import main as cli_main
from fedai.config import ExperimentConfig, apply_overrides, parse_override
from fedai.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_quickstart():
    # Arrange
    quickstart = ExperimentConfig.from_toml(REPO / "experiments" / "quickstart.toml")
    # Act
    defaults = ExperimentConfig()
    # Assert
    assert defaults.to_dict() == quickstart.to_dict()


def test_unknown_section_and_key_are_named():
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        ExperimentConfig.from_mapping({"trian": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key train\.learning_rate"):
        ExperimentConfig.from_mapping({"train": {"learning_rate": 0.1}})


def test_wrong_type_names_key_expectation_and_value():
    with pytest.raises(ConfigError, match=r"experiment\.rounds must be an integer; got '20'"):
        ExperimentConfig.from_mapping({"experiment": {"rounds": "20"}})
    with pytest.raises(ConfigError, match=r"train\.lr must be a number; got True"):
        ExperimentConfig.from_mapping({"train": {"lr": True}})
    with pytest.raises(ConfigError, match=r"data\.partition must be one of 'iid'"):
        ExperimentConfig.from_mapping({"data": {"partition": "random"}})


def test_out_of_range_values_are_rejected():
    with pytest.raises(ConfigError, match=r"data\.alpha must be in \(0, inf\); got -1\.0"):
        ExperimentConfig.from_mapping({"data": {"alpha": -1.0}})
    with pytest.raises(ConfigError, match=r"experiment\.clients_per_round must be in \[1, 5\]"):
        ExperimentConfig.from_mapping({"experiment": {"num_clients": 5, "clients_per_round": 6}})
    with pytest.raises(ConfigError, match=r"privacy\.delta must be in \(0, 1\); got 1\.0"):
        ExperimentConfig.from_mapping({"privacy": {"delta": 1.0}})


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_mapping({"train": {"lr": -1.0, "batch_size": 0, "bogus": 1}})
    # unknown keys stop type checks of that section, so fix bogus and look again
    assert "bogus" in str(info.value)
    with pytest.raises(ConfigError) as info2:
        ExperimentConfig.from_mapping({"train": {"lr": -1.0, "batch_size": 0}})
    assert len(info2.value.problems) == 2


def test_overrides_parse_toml_values():
    assert parse_override("train.lr=0.1") == ("train", "lr", 0.1)
    assert parse_override("data.dataset=csv:/tmp/x.csv") == ("data", "dataset", "csv:/tmp/x.csv")
    assert parse_override("privacy.secure_mode=true") == ("privacy", "secure_mode", True)
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override("lr=0.1")
    merged = apply_overrides({"train": {"lr": 0.5}}, ["train.lr=0.2", 'model.name="cnn"'])
    assert merged == {"train": {"lr": 0.2}, "model": {"name": "cnn"}}


def test_flat_and_json_roundtrip():
    cfg = ExperimentConfig.from_mapping(
        {"train": {"lr": 0.2}, "privacy": {"mode": "local", "noise_multiplier": 1.1}}
    )
    assert ExperimentConfig.from_flat(cfg.to_flat()) == cfg
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg


def test_toml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(bad)


def test_cli_exits_2_with_one_clear_message(capsys):
    status = cli_main(["simulate", "--set", "train.lr=-3", "--set", "data.alpha=0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "train.lr must be in (0, 100]; got -3.0" in err
    assert "data.alpha must be in (0, inf); got 0.0" in err


def test_learning_rate_decays_per_round():
    train = ExperimentConfig.from_mapping({"train": {"lr": 2.0, "lr_decay": 0.5}}).train
    assert [train.lr_at(r) for r in (1, 2, 3)] == [2.0, 1.0, 0.5]
    assert ExperimentConfig().train.lr_at(7) == ExperimentConfig().train.lr
    with pytest.raises(ConfigError, match=r"train\.lr_decay must be in \(0, 1\]; got 0\.0"):
        ExperimentConfig.from_mapping({"train": {"lr_decay": 0.0}})
