"""The same apps under Flower's Ray Simulation Engine and under `flwr run .`."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedai.commands.simulate import simulate
from fedai.config import ExperimentConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_ray_backend_matches_inprocess():
    cfg = ExperimentConfig.from_mapping(
        {"experiment": {"rounds": 3, "num_clients": 4, "clients_per_round": 4}}
    )
    ray = simulate(cfg, backend="ray", verbose=False).summary
    local = simulate(cfg, backend="inprocess", verbose=False).summary
    assert len(ray.rounds) == 3
    assert abs(ray.final["accuracy"] - local.final["accuracy"]) <= 0.01


def _superlink_pids(flwr_home: Path) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{flwr_home}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


def test_flwr_run_completes_with_local_simulation_superlink(tmp_path):
    # Arrange: a private FLWR_HOME, offline settings, a short run written to tmp_path
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    assert flwr is not None
    home = tmp_path / "flwr-home"
    out_dir = tmp_path / "out"
    bin_dir = str(Path(sys.executable).parent)  # flwr starts flower-superlink from PATH
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    cmd = [
        flwr,
        "run",
        ".",
        "--stream",
        "--federation-config",
        "num-supernodes=4 client-resources-num-cpus=1",
        "--run-config",
        f"experiment.rounds=2 experiment.num_clients=4 "
        f'experiment.clients_per_round=4 output.dir="{out_dir}"',
    ]
    try:
        # Act
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False
        )
    finally:
        # Cleanup: the auto-started SuperLink outlives `flwr run`; stop it by PID.
        for pid in _superlink_pids(home):
            os.kill(pid, signal.SIGTERM)
    # Assert
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert len(results["rounds"]) == 2
    assert results["final"]["accuracy"] is not None
    assert (out_dir / "model.pt").exists()
    # fedai's own round lines reach the stream; httpx's per-request INFO lines do not
    streamed = proc.stdout + proc.stderr
    assert "round   2/2" in streamed, streamed[-3000:]
    assert "HTTP Request" not in streamed, streamed[-3000:]
