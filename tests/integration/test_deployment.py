"""The real thing: a SuperLink and two SuperNodes (client agents) on loopback.

Each agent keeps its privacy ledger on disk (`state-dir`). Both agents are stopped and
started again between two runs: the second run's epsilon continues from the first.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {deadline_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_agents_restarted_between_runs_continue_their_epsilon(tmp_path):
    # Arrange: environment, a DP experiment file, one SuperLink
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    experiment = tmp_path / "dp.toml"
    experiment.write_text(
        '[experiment]\nname = "deploy"\nrounds = 1\nnum_clients = 2\nclients_per_round = 2\n'
        '[data]\ndataset = "breast_cancer"\npartition = "iid"\n[model]\nname = "logreg"\n'
        "[train]\nlocal_epochs = 1\nlr = 0.1\n"
        '[privacy]\nmode = "local"\nnoise_multiplier = 1.5\ndelta = 1e-5\n',
        encoding="utf-8",
    )
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "processes.log").open("wb")

    def start(*cmd: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True
        )
        procs.append(proc)
        return proc

    def start_agents() -> list[subprocess.Popen[bytes]]:
        return [
            start(
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--port",
                str(free_port()),
                "--node-config",
                f'partition-id={i} num-partitions=2 client-id="org-{i}" '
                f'state-dir="{tmp_path / f"state-{i}"}"',
            )
            for i in range(2)
        ]

    def run(out: Path) -> dict:
        proc = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "deploy",
                "--stream",
                "--run-config",
                f'config-file="{experiment}" output.dir="{out}" experiment.rounds=1 '
                "experiment.num_clients=2 experiment.clients_per_round=2",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads((out / "results.json").read_text())

    try:
        start(
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
            "--database",
            str(tmp_path / "state.db"),
            "--disable-runtime-dependency-installation",
        )
        wait_for_port(link_port)
        agents = start_agents()
        # Act: one run, restart both agents (new processes, new node ids), another run
        first = run(tmp_path / "out1")
        for agent in agents:
            stop(agent)
        start_agents()
        second = run(tmp_path / "out2")
    finally:
        for proc in procs:
            stop(proc)
        log.close()
    # Assert
    for cid in ("org-0", "org-1"):
        before = first["rounds"][-1]["privacy"]["clients"][cid]
        after = second["rounds"][-1]["privacy"]["clients"][cid]
        assert before["rounds_trained"] == 1
        assert after["rounds_trained"] == 2
        assert after["history"][0] == before["history"][0]
        assert after["epsilon"] > before["epsilon"]
        assert (tmp_path / f"state-{cid[-1]}" / f"ledger-{cid}.json").exists()
