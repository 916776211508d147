"""`fedai simulate --backend ray --ray-address` against a Ray head started here.

The head runs as `ray start --head --block` in a session of its own; it is stopped by
signalling that process group (its id is the head's PID), never with `ray stop`, which
would stop every Ray on the machine.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from fedai.cli import main as cli_main
from fedai.federation.deploy import free_port
from fedai.models import load_model

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_START_SECONDS = 180
RUN = [
    "--set",
    "experiment.rounds=3",
    "--set",
    "experiment.num_clients=4",
    "--set",
    "experiment.clients_per_round=4",
]


def _stop_group(proc):
    """SIGTERM the head's process group, SIGKILL it if it is still there after 60 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs: yields (address, its temp dir)."""
    port = free_port()
    # Short path: Ray's unix sockets live under the temp dir (108-byte limit).
    temp = Path(tempfile.mkdtemp(prefix="fedai-ray-", dir="/tmp"))
    log = open(temp / "head.log", "w")  # noqa: SIM115 - closed in finally
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--ray-client-server-port",
        str(free_port()),
        "--temp-dir",
        str(temp / "t"),
        "--block",
    ]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        while "Ray runtime started" not in (temp / "head.log").read_text():
            assert proc.poll() is None, (temp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in time"
            time.sleep(1)
        yield f"127.0.0.1:{port}", temp / "t"
    finally:
        _stop_group(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _driver_logs(temp_dir):
    # session_latest links to the session directory: count each log once
    return sorted({p.name for p in temp_dir.glob("session_*/logs/python-core-driver-*.log")})


def test_quickstart_on_an_existing_ray_cluster_gives_the_in_process_model(ray_head, tmp_path):
    # Arrange
    address, temp_dir = ray_head
    assert _driver_logs(temp_dir) == []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    # Act: the Ray run as its own process (its driver attaches to the head, then exits)
    proc = subprocess.run(
        [
            str(BIN / "fedai"),
            "simulate",
            "--backend",
            "ray",
            "--ray-address",
            address,
            "--client-cpus",
            "1",
            "--out",
            str(ray_out),
            *RUN,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    status = cli_main(["simulate", "--out", str(local_out), *RUN])
    # Assert: it ran on that cluster (the driver registered with the head's session) ...
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert status == 0
    assert len(_driver_logs(temp_dir)) == 1
    # ... and trained exactly the model the in-process run trained
    ray_model, _ = load_model(ray_out)
    local_model, _ = load_model(local_out)
    ray_state, local_state = ray_model.state_dict(), local_model.state_dict()
    assert ray_state.keys() == local_state.keys()
    assert all(torch.equal(ray_state[k], local_state[k]) for k in ray_state)


def test_client_resources_no_node_has_are_refused_by_name(ray_head, tmp_path):
    # Arrange
    address, _ = ray_head
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Act: one GPU per client on a CPU-only cluster
    proc = subprocess.run(
        [
            str(BIN / "fedai"),
            "simulate",
            "--backend",
            "ray",
            "--ray-address",
            address,
            "--client-gpus",
            "1",
            "--out",
            str(tmp_path / "gpu"),
            *RUN,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Assert
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "client resources 1 CPU / 1 GPU fit on no node of the Ray cluster at" in proc.stderr
