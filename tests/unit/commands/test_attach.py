"""fedai server --superlink: the run config it sends, and what it refuses before anything runs."""

from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from fedai.cli import main
from fedai.commands.attach import write_run_config
from fedai.config import ExperimentConfig
from fedai.errors import EXIT_USAGE, ConfigError
from server.app import config_from_run_config

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "mapping",
    [
        {},
        {
            "experiment": {"name": 'it\'s "quoted" = x', "rounds": 20, "round_timeout": 20.0},
            "privacy": {"mode": "local", "target_epsilon": 3.0, "delta": 1e-5},
            "train": {"lr_decay": 0.9, "lr": 0.001},
            "secure_aggregation": {"scheme": "ckks", "key_dir": "/keys dir/with space"},
        },
    ],
    ids=["defaults", "dp-he-quotes"],
)
def test_run_config_file_reads_back_through_flower_and_the_serverapp(tmp_path, mapping):
    # Arrange
    cfg = ExperimentConfig.from_mapping(mapping)
    out = tmp_path / "runs" / "r 1"
    # Act: what `flwr run --run-config FILE` sends, fused as the SuperLink fuses it, read
    # as the ServerApp reads it
    path = write_run_config(cfg, out, app_dir=REPO, path=tmp_path / "run-config.toml")
    overrides = parse_config_args([str(path)])
    fused = get_fused_config_from_dir(REPO, overrides)
    back, back_out = config_from_run_config(dict(fused), explicit=dict(overrides))
    # Assert
    assert back == cfg
    assert back_out == out
    assert "config-file" not in overrides  # nothing the ServerApp must read from here
    assert path.stat().st_mode & 0o777 == 0o600


def test_run_config_refuses_keys_the_app_does_not_declare(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"data.alpha" = ' in text
    (app / "pyproject.toml").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith('"data.alpha" = ')),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"does not declare run-config key\(s\) data\.alpha in"):
        write_run_config(ExperimentConfig(), tmp_path, app_dir=app, path=tmp_path / "rc.toml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--superlink", "127.0.0.1:1"], "--root-cert FILE or --certs DIR"),
        (["--superlink", "127.0.0.1:1", "--insecure", "--root-cert", "x.crt"], "--insecure excl"),
        (["--superlink", "127.0.0.1:1", "--root-cert", "missing.crt"], "missing.crt does not"),
        (["--superlink", "nowhere"], "--superlink must be HOST:PORT"),
        (["--insecure", "--root-cert", "ca.crt"], "--root-cert applies only with --superlink"),
    ],
)
def test_server_refuses_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["server", *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err
