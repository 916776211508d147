"""Seconds per round on real nodes: ``fedai server`` + 3 ``fedai client`` on loopback.

TLS and SuperNode authentication on, the quickstart experiment (digits, MLP, 3 local
epochs) with 3 nodes, each with a third of the digits as its own CSV. ``--mode fast`` is
fedai's default (one long-running ClientApp process per node, short polls); ``--mode
flower`` is Flower as it stands (``--isolation subprocess``: a new ``flwr-clientapp``
process per message; 3 s polls on the SuperNode and in the ServerApp). Every process is
stopped by its PID. Writes the per-round seconds from results.json and the load average.

    python experiments/bench/real_nodes.py --mode fast --rounds 6 --out bench-nodes.json
    python experiments/bench/real_nodes.py --mode flower --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SITES = 3


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sites(work: Path) -> list[Path]:
    """A third of the digits per site (shuffled, seed 0) as CSV with a label column."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    header = ",".join([f"px{j}" for j in range(x.shape[1])] + ["label"])
    paths = []
    for i, part in enumerate(np.array_split(order, SITES), start=1):
        path = work / f"site-{i}.csv"
        rows = np.column_stack([x[part], y[part]]).astype(int)
        np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")
        paths.append(path)
    return paths


def run(mode: str, rounds: int, work: Path) -> dict[str, object]:
    """One federation; returns its per-round seconds."""
    env = dict(os.environ)
    client_extra: list[str] = []
    if mode == "flower":
        env["FEDAI_GRID_POLL_INTERVAL"] = "3"  # HttpGrid.send_and_receive's own interval
        client_extra = ["--isolation", "subprocess", "--poll-interval", "3"]
    sites = write_sites(work)
    subprocess.run(
        [str(BIN / "fedai"), "certs", "--out", "certs", "--nodes", str(SITES)],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    address = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (work / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "fedai"), *args],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    t0 = time.perf_counter()
    try:
        server = start(
            "server",
            "server",
            "--config",
            str(REPO / "experiments" / "quickstart.toml"),
            "--set",
            f"experiment.rounds={rounds}",
            "--set",
            f"experiment.num_clients={SITES}",
            "--set",
            f"experiment.clients_per_round={SITES}",
            "--certs",
            "certs",
            "--address",
            address,
            "--state",
            "server",
            "--out",
            str(work / "out"),
        )
        for i, path in enumerate(sites, start=1):
            start(
                f"site-{i}",
                "client",
                "--server",
                address,
                "--certs",
                f"certs/nodes/node-{i}",
                "--data",
                str(path),
                "--client-id",
                f"site-{i}",
                "--state",
                f"state-{i}",
                *client_extra,
            )
        code = server.wait(timeout=60 * (5 + rounds))
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"fedai server exited {code}; see {work / 'server.log'}")
    results = json.loads((work / "out" / "results.json").read_text())
    seconds = [round(float(r["seconds"]), 2) for r in results["rounds"]]
    later = seconds[1:] or seconds
    return {
        "mode": mode,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "mean_seconds_rounds_2_on": round(sum(later) / len(later), 2),
        "final_accuracy": results["final"]["accuracy"],
        "wall_seconds": round(wall, 1),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    """Parse arguments, run, print (and optionally write) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("fast", "flower"), default="fast")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedai-nodes-") as tmp:
        report = run(args.mode, args.rounds, Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
