"""Real nodes, as an operator runs them: ``fedai certs``, ``fedai server``, ``fedai client``.

One SuperLink (TLS, SuperNode authentication) and three client agents, each a separate
process on 127.0.0.1 with its own CSV (a third of scikit-learn's digits each), CKKS
secure aggregation. The agents stay up while the coordinator runs two experiments:

1. local DP on, 3 rounds, while two more agents are refused: one with a key the
   SuperLink never registered, one trusting another CA. The federation goes on with the
   three; the decrypted final model (``fedai model decrypt``) is what the nodes evaluated,
   and the epsilon equals the in-process simulation's for the same config.
2. DP off (its noise comes from OS entropy, so a DP model cannot be reproduced), 2
   rounds: the decrypted final model equals, bit for bit, the in-process simulation of the
   same config and seed on the same three files.

Every process is started here and stopped by its PID in ``finally``. About 3-5 minutes on
a busy 2-core machine (mostly process start-up: each agent imports torch once).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from real_nodes_kit import BIN, SITES, Processes, fedai, free_port, write_sites

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_SECONDS = 600  # an upper bound for one `fedai server` run, not a performance check


def experiment(path: Path, *, rounds: int, dp: bool) -> Path:
    text = (
        f'[experiment]\nname = "nodes"\nseed = 3\nrounds = {rounds}\n'
        "num_clients = 3\nclients_per_round = 3\n"
        '[model]\nname = "mlp"\nhidden = 32\n'
        "[train]\nlocal_epochs = 1\nbatch_size = 32\nlr = 0.1\n"
        '[secure_aggregation]\nscheme = "ckks"\n'
    )
    if dp:
        text += '[privacy]\nmode = "local"\nnoise_multiplier = 1.0\ndelta = 1e-5\n'
    path.write_text(text, encoding="utf-8")
    return path


def simulate(config: Path, keys: Path, sites: dict[str, Path], state: Path, out: Path) -> dict:
    """The same experiment in-process: same ServerApp, ClientApp, files and node config."""
    from dataclasses import replace

    from clients.app import app as client_app
    from fedai.config import ExperimentConfig
    from fedai.federation.inprocess import run_inprocess
    from server.app import build_server_app, save_outcome

    cfg = ExperimentConfig.from_toml(config)
    cfg = cfg.replace(secure_aggregation=replace(cfg.secure_aggregation, key_dir=str(keys)))
    outcomes = []
    nodes = [
        {
            "data-path": str(path),
            "client-id": site,
            "state-dir": str(state / site),
            "key-dir": str(keys),
            "split-seed": site,
        }
        for site, path in sites.items()
    ]
    run_inprocess(
        build_server_app(cfg, sink=outcomes.append),
        client_app,
        num_supernodes=len(nodes),
        node_configs=nodes,
    )
    save_outcome(outcomes[0], out)
    return json.loads((out / "results.json").read_text())


def decrypt(env: dict[str, str], cwd: Path, run_dir: Path, keys: Path) -> dict:
    proc = fedai(env, cwd, "model", "decrypt", str(run_dir), "--keys", str(keys))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from fedai.models import load_model

    model, _spec = load_model(run_dir)
    return model.state_dict()


def test_server_and_three_clients_tls_auth_ckks_dp_and_refusals(tmp_path):
    # Arrange: data, certificates (ours and another CA's), CKKS keys, an environment
    sites = write_sites(tmp_path)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    for args in (
        ("certs", "--out", "certs", "--address", "127.0.0.1", "--nodes", "3"),
        ("certs", "--out", "other", "--address", "127.0.0.1", "--node", "stranger"),
        ("keys", "create", "--scheme", "ckks", "--out", "keys"),
    ):
        made = fedai(env, tmp_path, *args)
        assert made.returncode == 0, made.stdout + made.stderr
    assert (
        "flwr supernode register"
        in fedai(env, tmp_path, "certs", "--out", "again", "--nodes", "1").stdout
    )
    keys = tmp_path / "keys"
    assert oct((tmp_path / "certs" / "nodes" / "node-1" / "node.key").stat().st_mode)[-3:] == "600"
    port = free_port()
    server = f"127.0.0.1:{port}"
    dp_toml = experiment(tmp_path / "dp.toml", rounds=3, dp=True)
    plain_toml = experiment(tmp_path / "plain.toml", rounds=2, dp=False)
    procs = Processes(tmp_path, env)
    common = ("--server", server, "--keys", str(keys))

    def serve(config: Path, out: str) -> subprocess.Popen[bytes]:
        return procs.start(
            f"server-{out}",
            "server",
            "--config",
            str(config),
            "--certs",
            "certs",
            "--address",
            server,
            "--state",
            "link",
            "--out",
            str(tmp_path / out),
            "--key-dir",
            str(keys),
        )

    try:
        # Act 1: the coordinator, three good agents, two agents that must be refused
        first = serve(dp_toml, "out-dp")
        for i, site in enumerate(SITES, start=1):
            procs.start(
                site,
                "client",
                *common,
                "--certs",
                f"certs/nodes/node-{i}",
                "--data",
                str(sites[site]),
                "--client-id",
                site,
                "--state",
                f"state/{site}",
                "--node-config",
                f"split-seed={site}",  # the simulation below splits the same way
            )
        unregistered = procs.start(
            "site-4",
            "client",
            *common,
            "--root-cert",
            "certs/ca.crt",
            "--auth-key",
            "other/nodes/stranger/node.key",
            "--data",
            str(sites["site-1"]),
            "--client-id",
            "site-4",
            "--state",
            "state/site-4",
            "--join-timeout",
            "5",
        )
        wrong_ca = procs.start(
            "site-5",
            "client",
            *common,
            "--certs",
            "other/nodes/stranger",
            "--data",
            str(sites["site-2"]),
            "--client-id",
            "site-5",
            "--state",
            "state/site-5",
        )
        assert first.wait(timeout=RUN_SECONDS) == 0, procs.text("server-out-dp")
        assert unregistered.wait(timeout=120) == 1, procs.text("site-4")
        assert wrong_ca.wait(timeout=120) == 2, procs.text("site-5")
        # Act 2: a second experiment on the same agents (the SuperLink restarts)
        second = serve(plain_toml, "out-plain")
        assert second.wait(timeout=RUN_SECONDS) == 0, procs.text("server-out-plain")
    finally:
        procs.stop_all()

    # Assert: the refused agents say who they are and why
    assert "site-4" in procs.text("site-4")
    assert "not registered" in procs.text("site-4")
    assert "site-5" in procs.text("site-5")
    assert "does not verify" in procs.text("site-5")
    # ... the federation went on with the three, TLS and keys registered by fedai server
    dp = json.loads((tmp_path / "out-dp" / "results.json").read_text())
    assert [r["status"] for r in dp["rounds"]] == ["ok"] * 3
    assert all(sorted(r["trained"]) == list(SITES) for r in dp["rounds"])
    assert "registered successfully" in procs.text("server-out-dp")
    assert "already registered" in procs.text("server-out-plain")
    # ... each agent ran every task in its one process (no flwr-clientapp per message)
    for site in SITES:
        assert procs.text(site).count("train round") == 3 + 2
    # ... the epsilon is the simulation's (the same accounting, the same files)
    sim_dp = simulate(dp_toml, keys, sites, tmp_path / "sim-state", tmp_path / "sim-dp")
    assert dp["final"]["epsilon"] == pytest.approx(sim_dp["final"]["epsilon"], rel=1e-12)
    # ... the decrypted model is the one the nodes evaluated
    weights = decrypt(env, tmp_path, tmp_path / "out-dp", keys)
    assert weights
    accuracy = evaluate_on_sites(tmp_path / "out-dp", dp["config"], sites)
    assert accuracy == pytest.approx(dp["final"]["accuracy"], abs=1e-12)
    # ... and without DP it is bit for bit the in-process simulation's
    plain = json.loads((tmp_path / "out-plain" / "results.json").read_text())
    sim_plain = simulate(plain_toml, keys, sites, tmp_path / "sim-state2", tmp_path / "sim-plain")
    deployed = decrypt(env, tmp_path, tmp_path / "out-plain", keys)
    simulated = decrypt(env, tmp_path, tmp_path / "sim-plain", keys)
    assert deployed.keys() == simulated.keys()
    for name in deployed:
        assert torch.equal(deployed[name], simulated[name]), name
    assert plain["final"]["accuracy"] == sim_plain["final"]["accuracy"]


def evaluate_on_sites(run_dir: Path, config: dict, sites: dict[str, Path]) -> float:
    """The decrypted model's accuracy on the sites' own test splits, weighted by size."""
    from fedai.data import NodeReading, load_local_file
    from fedai.models import load_model
    from fedai.training import evaluate

    del config  # a node's split and scaling are its own, not the experiment's
    model, _spec = load_model(run_dir)
    correct = total = 0.0
    for site, path in sites.items():
        data = load_local_file(str(path), client_id=site, reading=NodeReading(split_seed=site))
        res = evaluate(model, data.x_test, data.y_test)
        correct += res.accuracy * res.num_examples
        total += res.num_examples
    return correct / total
