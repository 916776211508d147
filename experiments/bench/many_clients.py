"""Benchmark: 1,000 synthetic clients, 10 a round, 20 rounds; in-process vs Ray (JSON).

Issue 12's goal: the in-process runner takes at most 1/10 of the Ray backend's time for
the same config. One run times both backends side by side on the same config:

    .venv/bin/python experiments/bench/many_clients.py \
        --out experiments/bench/results/many_clients.json

The config is Synthetic(1, 1) (FedProx's generator, its own split per client),
multinomial logistic regression, FedAvg, one local epoch; evaluation runs on
``--evaluate`` sampled clients each round (``strategy.evaluate_clients``) and on every
client once at the end. ``fedai.commands.simulate.simulate`` runs each backend; the
modules both backends' drivers import (``clients.app``, ``server.app``: torch, Flower) are
imported before either is timed, and the in-process backend runs first, so it pays every
cold start of this process (the data generation; with Adam or DP-SGD also
``torch._dynamo``, which ``torch.optim`` imports on its first optimiser, 1.1-1.7 s, while
plain SGD runs ``fedai.training.PlainSgd`` without it) inside its time. Ray's time
includes starting Ray and its workers, which import and generate everything again in
their own processes.

Per backend: wall seconds of ``simulate``, the coordinator's loop seconds (discovery to
final evaluation: for Ray, without starting Ray), per-round seconds and the final
accuracy (both backends run the same clients with the same seeds, so they must agree).
The machine is shared: the JSON records the load average around each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from fedai.config import ExperimentConfig

GOAL_INPROCESS_OVER_RAY = 0.1


def bench_config(*, clients: int, per_round: int, rounds: int, evaluate: int) -> ExperimentConfig:
    """The benchmark's experiment: Synthetic(1,1), logistic regression, FedAvg."""
    return ExperimentConfig.from_mapping(
        {
            "experiment": {
                "name": "many_clients",
                "rounds": rounds,
                "num_clients": clients,
                "clients_per_round": per_round,
            },
            "data": {"dataset": "synthetic"},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 16},
            "strategy": {"evaluate_clients": evaluate},
        }
    )


def run_backend(cfg: ExperimentConfig, backend: str) -> dict[str, Any]:
    """Run ``cfg`` once on ``backend``; return its timings and results."""
    from fedai.commands.simulate import simulate

    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = simulate(cfg, backend=backend, verbose=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rounds = outcome.summary.rounds
    return {
        "wall_seconds": round(wall, 3),
        "cpu_seconds_this_process": round(cpu, 3),
        "loop_seconds": round(outcome.summary.seconds, 3),
        "round_seconds_sum": round(sum(r.seconds for r in rounds), 3),
        "round_seconds": [round(r.seconds, 3) for r in rounds],
        "rounds_ok": sum(r.status == "ok" for r in rounds),
        "final": outcome.summary.final,
        "final_evaluation": outcome.summary.final_evaluation,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    """Run each backend once and print (and optionally write) the timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--evaluate", type=int, default=10, help="evaluators a round (0: all)")
    parser.add_argument("--backends", default="inprocess,ray", help="comma list, run in this order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cfg = bench_config(
        clients=args.clients, per_round=args.per_round, rounds=args.rounds, evaluate=args.evaluate
    )
    t0 = time.perf_counter()
    import importlib

    for module in ("clients.app", "server.app"):  # the drivers' shared imports, timed apart
        importlib.import_module(module)

    imports = time.perf_counter() - t0
    results: dict[str, Any] = {
        "benchmark": "many clients: in-process vs Ray backend, same config, one run",
        "command": "python experiments/bench/many_clients.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": cfg.to_dict(),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "driver_imports_seconds": round(imports, 3),
        "caveats": [
            "the machine has 2 cores shared with other jobs: wall times depend on its load "
            "(load averages recorded per backend); Ray ran once",
            "Ray runs one worker per core (2 here); its wall time includes starting Ray and "
            "the workers' own imports and data generation",
        ],
        "backends": {},
    }
    for backend in args.backends.split(","):
        row = run_backend(cfg, backend)
        results["backends"][backend] = row
        print(
            f"{backend:<10} wall {row['wall_seconds']:8.2f} s  loop {row['loop_seconds']:8.2f} s"
            f"  rounds {row['round_seconds_sum']:7.2f} s  final accuracy "
            f"{row['final']['accuracy']}",
            flush=True,
        )
    b = results["backends"]
    if "inprocess" in b and "ray" in b:
        ratio = b["inprocess"]["wall_seconds"] / b["ray"]["wall_seconds"]
        results["summary"] = {
            "inprocess_over_ray_wall": round(ratio, 4),
            "inprocess_over_ray_loop": round(
                b["inprocess"]["loop_seconds"] / b["ray"]["loop_seconds"], 4
            ),
            "goal_inprocess_over_ray": GOAL_INPROCESS_OVER_RAY,
            "goal_met": ratio <= GOAL_INPROCESS_OVER_RAY,
            "same_final_accuracy": b["inprocess"]["final"]["accuracy"]
            == b["ray"]["final"]["accuracy"],
        }
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
