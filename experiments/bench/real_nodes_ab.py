"""Real-node seconds per round, two checkouts side by side (A/B, alternating runs, JSON).

Runs ``real_nodes.py --mode fast`` from checkout A, then from checkout B, ``--reps`` times,
each with that checkout first on ``PYTHONPATH`` (the same venv and Flower), so both see
the same machine state. For example, before and after a change:

    git worktree add /tmp/before <commit>
    python experiments/bench/real_nodes_ab.py --a /tmp/before --b . --rounds 5 --reps 2 \
        --out experiments/bench/results/real_nodes_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(tree: Path, rounds: int) -> dict[str, object]:
    """One ``real_nodes.run`` from ``tree``; its JSON, or the error."""
    code = (
        "import sys, json; from pathlib import Path; "
        f"sys.path.insert(0, {str(tree / 'experiments' / 'bench')!r}); import real_nodes; "
        f"print(json.dumps(real_nodes.run('fast', {rounds}, Path(sys.argv[1]))))"
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory(prefix="fedai-ab-") as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code, tmp], env=env, cwd=tree, capture_output=True, text=True
        )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    return dict(json.loads(lines[-1]))


def main() -> None:
    """Parse arguments, alternate A and B, print (and optionally write) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, type=Path, help="checkout A (e.g. before)")
    parser.add_argument("--b", required=True, type=Path, help="checkout B (e.g. after)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()
    runs = []
    for rep in range(args.reps):
        for name, tree in (("a", args.a), ("b", args.b)):
            result = one_run(tree.resolve(), args.rounds)
            runs.append({"checkout": name, "tree": str(tree), "rep": rep, **result})
            print(json.dumps(runs[-1]), flush=True)
    text = json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
