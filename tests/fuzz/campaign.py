"""Long fuzz campaign over fedai's three untrusted-input decoders.

Usage (from the repository root)::

    .venv/bin/python tests/fuzz/campaign.py --per-target 20000 \\
        --out experiments/fuzz/campaign.json

For each target (``coordinator``, ``client``, ``holder_rows``, ``holder_columns``) it runs
the exhaustive sweep (:func:`fuzz_mutations.sweep_mutations`; evenly thinned to half the
budget when ``--per-target`` is smaller than twice the sweep) and fills the rest with the
seeded random stream ``--seed``. Every trial runs in a disposable worker process
(:class:`fuzz_supervisor.Supervisor`): deaths and hangs are counted, not fatal.

It prints counts per target x outcome and the failure classes, and writes the JSON report
(counts, seconds, classes with example trials and typed reasons). Next to the report it
keeps ``<stem>-work/``: the fixtures the trials ran against (keys and encrypted inputs,
~15 MB; it carries its own ``.gitignore``) and ``inputs/``, the exact input of up to three
trials per failure class, each with a ``replay`` command::

    .venv/bin/python tests/fuzz/campaign.py --fixtures DIR --replay coordinator/sweep/1234

Exit status: 0 when no trial died, hung, raised an untyped error or was accepted into an
unusable result; 1 otherwise; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_fixtures
from fuzz_mutations import TARGETS
from fuzz_plans import mutation_for, random_mutation, sweep_mutations
from fuzz_supervisor import (
    BAD_OUTCOMES,
    OUTCOMES,
    Supervisor,
    Tally,
    Trial,
    run_trials,
)


def plan(target: str, fixture_dir: Path, per_target: int, seed: int) -> list[Trial]:
    """The trials of one target: the sweep (maybe thinned), then random ones."""
    shape = fuzz_fixtures.load_shape(fixture_dir, target)
    sweep = sweep_mutations(target, shape)
    if per_target >= 2 * len(sweep):
        picks = list(range(len(sweep)))
    else:
        n = per_target // 2
        picks = sorted({int(i) for i in np.linspace(0, len(sweep) - 1, n)}) if n else []
    trials = [Trial(target, "sweep", i, sweep[i]) for i in picks]
    trials += [
        Trial(target, seed, i, random_mutation(target, seed, i, shape))
        for i in range(per_target - len(trials))
    ]
    return trials


def _shards(trials: list[Trial], n: int) -> list[list[Trial]]:
    return [trials[k::n] for k in range(n)]


def _merge(into: Tally, other: Tally) -> None:
    into.counts.update(other.counts)
    into.changed_ok += other.changed_ok
    into.seconds = max(into.seconds, other.seconds)
    into.bad += other.bad
    for sig, cls in other.classes.items():
        mine = into.classes.setdefault(sig, {**cls, "count": 0, "examples": []})
        mine["count"] += cls["count"]
        mine["examples"] = (mine["examples"] + cls["examples"])[:3]


def run_campaign(args: argparse.Namespace) -> dict[str, Any]:
    """Build fixtures, run every target, return the report."""
    out = Path(args.out)
    work = out.parent / f"{out.stem}-work"
    fixture_dir = Path(args.fixtures) if args.fixtures else work / "fixtures"
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("# fuzz fixtures and crash inputs: test keys, ~15 MB\n*\n")
    if not (fixture_dir / "meta.json").exists():
        fuzz_fixtures.build_fixtures(fixture_dir)
    inputs = work / "inputs"
    deadline = time.monotonic() + args.max_seconds
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "per_target": args.per_target,
        "seed": args.seed,
        "timeout_seconds": args.timeout,
        "workers": args.workers,
        "fixtures": str(fixture_dir),
        "inputs": str(inputs),
        "targets": {},
    }
    started = time.perf_counter()
    saved: Counter[str] = Counter()
    for target in args.targets:
        trials = plan(target, fixture_dir, args.per_target, args.seed)
        tallies = [Tally(target) for _ in range(args.workers)]

        def work_on(shard: list[Trial], tally: Tally) -> None:
            with Supervisor(
                fixture_dir,
                work / "faults",
                timeout=args.timeout,
                mem_limit=args.mem_limit_mb * 2**20,
            ) as sup:
                run_trials(
                    sup,
                    shard,
                    tally,
                    deadline=deadline,
                    crash_dir=inputs,
                    saved=saved,
                    progress=_progress,
                )

        threads = [
            threading.Thread(target=work_on, args=(shard, tallies[k]), daemon=True)
            for k, shard in enumerate(_shards(trials, args.workers))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = tallies[0]
        for other in tallies[1:]:
            _merge(total, other)
        report["targets"][target] = {"planned": len(trials), **total.to_dict()}
        _print_target(target, total)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["stopped_by_deadline"] = time.monotonic() > deadline
    return report


def _progress(tally: Tally) -> None:
    counts = " ".join(f"{o}={n}" for o, n in sorted(tally.counts.items()))
    print(f"  ... {tally.target}: {sum(tally.counts.values())} trials: {counts}", flush=True)


def _print_target(target: str, tally: Tally) -> None:
    counts = " ".join(f"{o}={tally.counts.get(o, 0)}" for o in OUTCOMES)
    print(f"{target:15s} {counts}  ({tally.seconds:.1f} s)", flush=True)
    for sig, cls in sorted(tally.bad_classes().items(), key=lambda kv: -kv[1]["count"]):
        ex = cls["examples"][0] if cls["examples"] else {}
        print(f"    {cls['count']:6d} x {sig}", flush=True)
        print(f"           e.g. {ex.get('trial')}: {ex.get('mutation')}", flush=True)


def replay(args: argparse.Namespace) -> int:
    """Re-run one trial in a fresh worker and print its record."""
    target, seed_text, index_text = args.replay.split("/")
    seed: int | str = seed_text if seed_text == "sweep" else int(seed_text)
    fixture_dir = Path(args.fixtures)
    shape = fuzz_fixtures.load_shape(fixture_dir, target)
    mutation = mutation_for(target, seed, int(index_text), shape)
    trial = Trial(target, seed, int(index_text), mutation)
    with Supervisor(
        fixture_dir, fixture_dir.parent / "faults", timeout=args.timeout, confirm=()
    ) as sup:
        record = sup.run(trial)
    print(json.dumps({"mutation": mutation, **record}, indent=1, default=str))
    return 1 if record["outcome"] in BAD_OUTCOMES else 0


def _trials_label(report: dict[str, Any]) -> Iterator[str]:
    for target, t in report["targets"].items():
        bad = sum(t["counts"][o] for o in BAD_OUTCOMES)
        yield f"{target}: {t['trials']} trials, {bad} failures"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-target", type=int, default=20000, help="trials per target")
    parser.add_argument("--out", default="experiments/fuzz/campaign.json", help="JSON report")
    parser.add_argument("--seed", type=int, default=1, help="random stream")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--timeout", type=float, default=5.0, help="hang threshold, seconds")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per target")
    parser.add_argument("--mem-limit-mb", type=int, default=4096, help="worker address space")
    parser.add_argument("--max-seconds", type=float, default=4 * 3600, help="overall budget")
    parser.add_argument("--fixtures", help="reuse a fixture directory (default: build one)")
    parser.add_argument("--replay", metavar="TARGET/SEED/INDEX", help="re-run one trial")
    args = parser.parse_args(argv)
    if args.per_target < 1 or args.workers < 1 or args.timeout <= 0:
        parser.error("--per-target and --workers must be >= 1 and --timeout > 0")
    if args.replay:
        if not args.fixtures:
            parser.error("--replay needs --fixtures")
        return replay(args)
    report = run_campaign(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    for line in _trials_label(report):
        print(line)
    print(f"report: {out} ({report['seconds']} s)")
    failures = sum(t["counts"][o] for t in report["targets"].values() for o in BAD_OUTCOMES)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
