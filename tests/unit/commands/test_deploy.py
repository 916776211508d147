"""fedai server / fedai client: what is refused before anything starts, and the glue."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedai.cli import main
from fedai.commands.certs import make_federation_certs
from fedai.commands.deploy import judge_results, write_experiment_toml
from fedai.config import ExperimentConfig
from fedai.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError
from fedai.federation.deploy import keep_line, split_address, write_cli_config


def test_experiment_toml_reads_back_with_unset_values_and_quotes(tmp_path):
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"name": 'it\'s "quoted"'},
            "privacy": {"mode": "local", "target_epsilon": 3.0, "delta": 1e-5},
            "train": {"lr_decay": 0.9},
        }
    )
    path = write_experiment_toml(cfg, tmp_path / "x.toml")
    assert ExperimentConfig.from_toml(path) == cfg
    assert path.stat().st_mode & 0o777 == 0o600


def _results(tmp_path, statuses, stop_reason=""):
    cfg = ExperimentConfig.from_mapping({"experiment": {"rounds": len(statuses)}})
    doc = {
        "config": cfg.to_dict(),
        "rounds": [
            {"round": i + 1, "accuracy": 0.5, "loss": 1.0, "seconds": 1.0, "status": s}
            for i, s in enumerate(statuses)
        ],
        "final": {"accuracy": 0.5},
        "stop_reason": stop_reason,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    return path, cfg


@pytest.mark.parametrize(
    ("statuses", "stop_reason", "expected"),
    [
        (["ok", "ok"], "", EXIT_OK),
        (["ok", "failed"], "", EXIT_OK),
        (["failed", "failed"], "", EXIT_FAILED),
        (["ok", "ok"], "every client's budget is exhausted", EXIT_FAILED),
    ],
)
def test_exit_status_follows_the_results(tmp_path, statuses, stop_reason, expected):
    path, cfg = _results(tmp_path, statuses, stop_reason)
    code, _reason, _final = judge_results(path, cfg)
    assert code == expected


def test_unreadable_results_fail(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{")
    assert judge_results(path, ExperimentConfig())[0] == EXIT_FAILED


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("INFO server.app: round   2/5  acc 0.9  loss 0.2", True),
        ("INFO:server.app:round 2/5", True),
        ("WARNING fedai.federation.polling: x", True),
        ("INFO:httpx:HTTP Request: POST http://127.0.0.1/v1/runtime/push-logs", False),
        ("\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `1`", False),
        ("\x1b[91mERROR \x1b[0m:     ServerApp raised an exception", True),
        ('{"ts": "2026-12-01T00:00:00Z", "level": "INFO", "logger": "server.app"}', True),
        ("Traceback (most recent call last):", True),
        ("", False),
    ],
)
def test_stream_shows_fedais_lines_and_problems(line, kept):
    assert keep_line(line, verbose=False) is kept
    assert keep_line(line, verbose=True)


def test_cli_config_names_one_superlink(tmp_path):
    import tomllib

    path = write_cli_config(tmp_path, address="127.0.0.1:9093", root_cert=tmp_path / "ca.crt")
    data = tomllib.loads(path.read_text())
    assert data["superlink"]["default"] == "fedai"
    assert data["superlink"]["fedai"]["root-certificates"] == str((tmp_path / "ca.crt").resolve())
    insecure = tomllib.loads(write_cli_config(tmp_path, address="h:1", root_cert=None).read_text())
    assert insecure["superlink"]["fedai"]["insecure"] is True


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:0", "host:99999", ":9093"])
def test_addresses_need_a_port(address):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        split_address(address, what="--server")


# ---------------------------------------------------------------------- refusals
def _client(tmp_path, *extra):
    return main(
        [
            "client",
            "--server",
            "127.0.0.1:9",
            "--client-id",
            "site-9",
            "--state",
            str(tmp_path / "state"),
            *extra,
        ]
    )


def test_client_refuses_a_missing_data_file_naming_the_node(tmp_path, capsys):
    code = _client(tmp_path, "--data", str(tmp_path / "nope.csv"), "--insecure")
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "site-9" in err
    assert "nope.csv" in err


def test_client_refuses_an_ed25519_auth_key(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    make_federation_certs(tmp_path / "c", addresses=["127.0.0.1"], nodes=["n"])
    key = tmp_path / "ed.key"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    code = _client(
        tmp_path,
        "--data",
        str(data),
        "--root-cert",
        str(tmp_path / "c" / "ca.crt"),
        "--auth-key",
        str(key),
    )
    assert code == EXIT_USAGE
    assert "must be an ECDSA key" in capsys.readouterr().err


def test_client_refuses_a_bad_policy_before_starting(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    code = _client(
        tmp_path, "--data", str(data), "--insecure", "--node-config", "min-noise-multiplier=-1"
    )
    assert code == EXIT_USAGE
    assert "min-noise-multiplier" in capsys.readouterr().err


def test_server_needs_certs_or_insecure(tmp_path, capsys):
    code = main(["server", "--state", str(tmp_path / "s")])
    assert code == EXIT_USAGE
    assert "--certs" in capsys.readouterr().err


def test_server_names_an_unknown_experiment_key(tmp_path, capsys):
    code = main(["server", "--insecure", "--set", "train.learning_rate=0.1"])
    assert code == EXIT_USAGE
    assert "train.learning_rate" in capsys.readouterr().err


def test_server_outcome_says_why_flower_marked_the_run_failed(tmp_path, capsys):
    from fedai.commands.deploy import _server_outcome

    _path, cfg = _results(tmp_path, ["failed", "failed"])
    code = _server_outcome(7, "finished:failed", tmp_path, cfg, since=0.0)
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert "finished:failed" in err
    assert "no round was accepted" in err


def test_server_outcome_ignores_an_older_results_file(tmp_path, capsys):
    from fedai.commands.deploy import _server_outcome

    path, cfg = _results(tmp_path, ["ok", "ok"])
    code = _server_outcome(7, "finished:completed", tmp_path, cfg, since=path.stat().st_mtime + 60)
    assert code == EXIT_FAILED
    assert "wrote no" in capsys.readouterr().err
    assert _server_outcome(7, "finished:completed", tmp_path, cfg, since=0.0) == EXIT_OK
