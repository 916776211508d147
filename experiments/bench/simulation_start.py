"""Side-by-side start-up benchmark: in-process runner vs Flower's Ray Simulation Engine.

Each backend runs the same config in its own fresh Python process (so neither inherits
the other's imports or warm caches). Reported per backend: seconds to import torch, Flower
and the apps (the same for both), seconds from calling the runner to the first completed
round (start-up plus one round: Ray's start, actor spawn and the actors' own imports count
here), total runner seconds, and final accuracy.

    python experiments/bench/simulation_start.py --out bench-sim.json
    python experiments/bench/simulation_start.py --set experiment.rounds=5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(backend: str, overrides: list[str]) -> dict[str, object]:
    """Run one backend in this process and return its timings."""
    t0 = time.perf_counter()
    # Import what both backends need in the driver (torch, Flower, the apps) before the
    # clock starts: that cost is the same for both and is reported separately. Ray's
    # actors are separate processes that import all of it again after the clock starts:
    # that is part of Ray's start-up. (torch._dynamo is no longer imported ahead: plain SGD
    # runs never import it; Adam and DP-SGD pay it inside the clock, as a user does.)
    import clients.app  # noqa: F401
    import server.app  # noqa: F401
    from fedai.commands.simulate import simulate
    from fedai.config import ExperimentConfig

    t_import = time.perf_counter() - t0
    cfg = ExperimentConfig.load(None, overrides)
    marks: list[float] = []
    start = time.perf_counter()

    import server.app as server_app_module

    original = server_app_module.format_progress

    def stamp(record: object, total: int) -> str:
        marks.append(time.perf_counter() - start)
        return original(record, total)  # type: ignore[arg-type]

    server_app_module.format_progress = stamp  # type: ignore[assignment]
    outcome = simulate(cfg, backend=backend, verbose=True)
    total = time.perf_counter() - start
    return {
        "backend": backend,
        "import_s": round(t_import, 3),
        "first_round_s": round(marks[0], 3) if marks else None,
        "first_round_with_imports_s": round(t_import + marks[0], 3) if marks else None,
        "total_s": round(total, 3),
        "rounds": len(marks),
        "final_accuracy": outcome.summary.final["accuracy"],
    }


def main() -> None:
    """Run both backends side by side and write JSON."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", help="write JSON here (default: print)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--child", choices=("inprocess", "ray"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(args.child, args.overrides)
        print("BENCH " + json.dumps(result), flush=True)
        return
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    results = {}
    for backend in ("inprocess", "ray"):
        cmd = [sys.executable, __file__, "--child", backend]
        for o in args.overrides:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH "))
        results[backend] = json.loads(line[len("BENCH ") :])
    ip, ray = results["inprocess"], results["ray"]
    doc = {
        "benchmark": "simulation_start",
        "config_overrides": args.overrides,
        "cpus": os.cpu_count(),
        "results": results,
        "first_round_ratio_inprocess_over_ray": round(
            ip["first_round_s"] / ray["first_round_s"], 4
        ),
        "first_round_with_imports_ratio_inprocess_over_ray": round(
            ip["first_round_with_imports_s"] / ray["first_round_with_imports_s"], 4
        ),
        "total_ratio_inprocess_over_ray": round(ip["total_s"] / ray["total_s"], 4),
        "accuracy_difference": abs(ip["final_accuracy"] - ray["final_accuracy"]),
    }
    text = json.dumps(doc, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
