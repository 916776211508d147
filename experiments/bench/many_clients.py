"""Benchmark: 1,000 synthetic clients, 10 a round, 20 rounds; in-process vs Ray (JSON).

Evaluation runs on a sample of clients each round (``strategy.evaluate_clients``) and on
every client once at the end, so a round costs the sampled clients only.

    .venv/bin/python experiments/bench/many_clients.py --backends inprocess,ray \
        --out experiments/bench/results/many_clients.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedai.commands.simulate import simulate
from fedai.config import ExperimentConfig


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
            "data": {"dataset": "synthetic", "min_samples": 10},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 16},
            "strategy": {"evaluate_clients": evaluate},
        }
    )


def main() -> None:
    """Run each backend once and print (and optionally write) the timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--evaluate", type=int, default=10, help="evaluators a round (0: all)")
    parser.add_argument("--backends", default="inprocess")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = bench_config(
        clients=args.clients, per_round=args.per_round, rounds=args.rounds, evaluate=args.evaluate
    )
    results: dict[str, object] = {"config": cfg.to_dict(), "backends": {}}
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        outcome = simulate(cfg, backend=backend, verbose=False)
        wall = time.perf_counter() - t0
        results["backends"][backend] = {  # type: ignore[index]
            "wall_seconds": round(wall, 3),
            "loop_seconds": round(outcome.summary.seconds, 3),
            "round_seconds": [round(r.seconds, 3) for r in outcome.summary.rounds],
            "final": outcome.summary.final,
            "final_evaluation": outcome.summary.final_evaluation,
        }
    b = results["backends"]
    if isinstance(b, dict) and "inprocess" in b and "ray" in b:
        results["inprocess_over_ray"] = round(
            b["inprocess"]["wall_seconds"] / b["ray"]["wall_seconds"], 4
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
