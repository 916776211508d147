"""Parent side of the fuzz suite: run trials in a worker process and survive its death.

:class:`Supervisor` owns one worker (:func:`fuzz_worker.worker_main`, started with the
``forkserver`` method so that a restart forks an interpreter that already imported
TenSEAL and torch). For each trial it sends ``(target, mutation)`` and waits:

* a ``("result", ...)`` reply gives ``ok`` / ``typed`` / ``untyped`` / ``insane``;
* end-of-file on the pipe means the worker died: outcome ``death`` with the signal (or exit
  code) and the Python stack :mod:`faulthandler` wrote, then a fresh worker;
* no reply within ``timeout`` seconds: outcome ``hang``, the worker is killed by PID.

A death is re-run once in a fresh worker (``isolated`` says whether it reproduces on its
own, as opposed to an earlier trial having corrupted the worker).

:class:`Tally` counts outcomes per target and groups them into classes (outcome + error
type + normalised message + location) with a few example trials each; :func:`save_input`
writes the exact input of a bad trial next to its fixtures so it can be replayed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fuzz_fixtures
import numpy as np
from fuzz_mutations import ENVELOPE_TARGETS, apply_envelope, apply_holder
from fuzz_plans import describe
from fuzz_wire import Mutation

OUTCOMES = ("ok", "typed", "untyped", "insane", "death", "hang", "harness")
BAD_OUTCOMES = ("untyped", "insane", "death", "hang", "harness")
DEFAULT_TIMEOUT = 5.0
DEFAULT_MEM_LIMIT = 4 * 2**30
START_TIMEOUT = 180.0
EXAMPLES_PER_CLASS = 3
SAVED_PER_CLASS = 3
PRELOAD = ("numpy", "tenseal", "fedai.crypto.ckks", "fedai.inference")


@dataclass
class Trial:
    """One trial: its name ``(target, seed, index)`` and the mutation it stands for."""

    target: str
    seed: int | str
    index: int
    mutation: Mutation

    def key(self) -> str:
        """Short id, e.g. ``coordinator/sweep/1234``."""
        return f"{self.target}/{self.seed}/{self.index}"


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-exitcode).name
        return f"signal {-exitcode}"
    return f"exit {exitcode}"


def _fault_stack(text: str) -> tuple[str, list[str]]:
    """``(first fedai frame, stack lines)`` from a faulthandler dump."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("File ")]
    frames = []
    for ln in lines:
        m = re.match(r'File "(.*)", line (\d+) in (\S+)', ln)
        if m:
            name = m.group(1)
            cut = name.rfind("/fedai/")
            short = name[cut + 1 :] if cut >= 0 else Path(name).name
            frames.append(f"{short}:{m.group(2)} in {m.group(3)}")
    fedai = [f for f in frames if f.startswith("fedai/")]
    top = fedai[0] if fedai else (frames[0] if frames else "?")
    return top, frames[:12]


class Supervisor:
    """Runs trials in a disposable worker process.

    Args:
        fixture_dir: Fixtures built by :func:`fuzz_fixtures.build_fixtures`.
        work_dir: Where the workers' faulthandler files go.
        timeout: Seconds a trial may take before it counts as a hang.
        mem_limit: Worker address-space limit in bytes (0: none).
        start_method: ``forkserver`` (default; fast restarts) or ``spawn``.
        confirm: Outcomes re-run once in a fresh worker to see whether they reproduce
            in isolation (default: deaths; hangs cost a whole timeout each).
    """

    def __init__(
        self,
        fixture_dir: Path,
        work_dir: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        mem_limit: int = DEFAULT_MEM_LIMIT,
        start_method: str = "forkserver",
        confirm: tuple[str, ...] = ("death",),
    ) -> None:
        self.fixture_dir = Path(fixture_dir)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.mem_limit = mem_limit
        self.confirm = confirm
        self._ctx: Any = mp.get_context(start_method)
        if start_method == "forkserver":
            # The heavy imports; not fuzz_worker itself: Python 3.11's forkserver ignores the
            # parent's sys.path, so this directory is not importable there.
            self._ctx.set_forkserver_preload(list(PRELOAD))
        self._proc: Any = None
        self._conn: Any = None
        self._fault: Path | None = None
        self.starts = 0

    # ------------------------------------------------------------------ process control

    def _start(self) -> None:
        import fuzz_worker

        self.starts += 1
        self._fault = self.work_dir / f"fault-{os.getpid()}-{self.starts}.txt"
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=fuzz_worker.worker_main,
            args=(child, str(self.fixture_dir), str(self._fault), self.mem_limit),
            daemon=True,
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(START_TIMEOUT):
            self._kill()
            raise RuntimeError(f"fuzz worker did not start within {START_TIMEOUT} s")
        try:
            msg = parent.recv()
        except EOFError as err:
            code = proc.exitcode
            self._kill()
            raise RuntimeError(f"fuzz worker died while starting ({_signal_name(code)})") from err
        if msg[0] != "ready":
            self._kill()
            raise RuntimeError(f"fuzz worker sent {msg!r} instead of ready")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is not None:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
            with contextlib.suppress(ValueError):
                proc.close()

    def _take_fault(self) -> str:
        if self._fault is None or not self._fault.exists():
            return ""
        text = self._fault.read_text(errors="replace")
        self._fault.unlink(missing_ok=True)
        return text

    def close(self) -> None:
        """Stop the worker (politely, then by PID)."""
        if self._proc is not None and self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(None)
            self._proc.join(5)
        self._kill()
        self._take_fault()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ trials

    def restart(self) -> None:
        """Replace the worker by a fresh one (the next trial starts it)."""
        self.close()

    def run(self, trial: Trial, *, fresh: bool = False) -> dict[str, Any]:
        """Run one trial (in a fresh worker if ``fresh``); returns its record."""
        if fresh:
            self.restart()
        record = self._run_once(trial)
        if record["outcome"] in self.confirm:
            again = self._run_once(trial)
            record["isolated"] = again["outcome"] == record["outcome"]
        return record

    def _run_once(self, trial: Trial) -> dict[str, Any]:
        if self._proc is None:
            self._start()
        assert self._conn is not None
        assert self._proc is not None
        start = time.perf_counter()
        stage = "decode"
        base = {"target": trial.target, "seed": trial.seed, "index": trial.index}
        try:
            self._conn.send((trial.target, trial.mutation))
            while True:
                left = self.timeout - (time.perf_counter() - start)
                if left <= 0 or not self._conn.poll(left):
                    pid = self._proc.pid
                    self._kill()
                    self._take_fault()
                    return {
                        **base,
                        "outcome": "hang",
                        "stage": stage,
                        "error": "Timeout",
                        "message": f"no reply within {self.timeout:g} s (worker {pid} killed)",
                        "where": "?",
                        "seconds": round(time.perf_counter() - start, 3),
                    }
                kind, payload = self._conn.recv()
                if kind == "stage":
                    stage = payload
                    continue
                return {
                    **base,
                    "stage": stage,
                    **payload,
                    "seconds": round(time.perf_counter() - start, 4),
                }
        except (EOFError, OSError):
            self._proc.join(10)
            code = self._proc.exitcode
            self._kill()
            top, stack = _fault_stack(self._take_fault())
            return {
                **base,
                "outcome": "death",
                "stage": stage,
                "error": _signal_name(code),
                "message": f"worker died ({_signal_name(code)}) at {top}",
                "where": top,
                "stack": stack,
                "seconds": round(time.perf_counter() - start, 3),
            }


# ---------------------------------------------------------------------- bookkeeping


def normalise(message: str) -> str:
    """A message with numbers, hex and quoted bytes blanked (to group similar errors)."""
    text = re.sub(r"b'[^']*'|b\"[^\"]*\"", "b'…'", message)
    text = re.sub(r"\b[0-9a-f]{8,}\b", "H", text)
    text = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return text[:120]


def signature(record: dict[str, Any]) -> str:
    """Class of a record: outcome, error type, normalised message and location."""
    outcome = record["outcome"]
    if outcome == "ok":
        return "ok"
    if outcome == "death":
        return f"death {record.get('error')} at {record.get('where')} (stage {record['stage']})"
    if outcome == "typed":
        return f"typed {record.get('error')}: {normalise(record.get('message', ''))}"
    return (
        f"{outcome} {record.get('error')}: {normalise(record.get('message', ''))} "
        f"@ {record.get('where')}"
    )


@dataclass
class Tally:
    """Outcome counts and classes of one target."""

    target: str
    counts: Counter[str] = field(default_factory=Counter)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    changed_ok: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: dict[str, Any], mutation: Mutation) -> None:
        """Count one record (examples are kept for every class but ``ok``)."""
        outcome = record["outcome"]
        self.counts[outcome] += 1
        if outcome == "ok" and record.get("changed"):
            self.changed_ok += 1
        sig = signature(record)
        cls = self.classes.setdefault(
            sig, {"outcome": outcome, "error": record.get("error"), "count": 0, "examples": []}
        )
        cls["count"] += 1
        if outcome != "ok" and len(cls["examples"]) < EXAMPLES_PER_CLASS:
            example = {
                "trial": f"{record['target']}/{record['seed']}/{record['index']}",
                "mutation": describe(mutation),
                "message": record.get("message"),
                "where": record.get("where"),
            }
            for key in ("stack", "isolated", "stage", "saved"):
                if key in record:
                    example[key] = record[key]
            cls["examples"].append(example)
        if outcome in BAD_OUTCOMES:
            self.bad.append({**record, "mutation": mutation})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        n = sum(self.counts.values())
        return {
            "trials": n,
            "seconds": round(self.seconds, 2),
            "counts": {o: self.counts.get(o, 0) for o in OUTCOMES},
            "ok_changed": self.changed_ok,
            "classes": dict(sorted(self.classes.items(), key=lambda kv: -kv[1]["count"])),
        }

    def bad_classes(self) -> dict[str, dict[str, Any]]:
        """Classes whose outcome is a failure (death, hang, untyped, insane, harness)."""
        return {k: v for k, v in self.classes.items() if v["outcome"] in BAD_OUTCOMES}


def failure_report(tally: Tally) -> str:
    """Readable list of a tally's failure classes (for assertion messages)."""
    lines = [f"{tally.target}: {dict(tally.counts)}"]
    for sig, cls in sorted(tally.bad_classes().items(), key=lambda kv: -kv[1]["count"]):
        lines.append(f"  {cls['count']} x {sig}")
        for ex in cls["examples"]:
            lines.append(f"      {ex['trial']}: {ex['mutation']}")
            lines.extend(f"          {frame}" for frame in ex.get("stack", [])[:6])
    return "\n".join(lines)


def run_trials(
    supervisor: Supervisor,
    trials: Iterable[Trial],
    tally: Tally,
    *,
    deadline: float | None = None,
    crash_dir: Path | None = None,
    saved: Counter[str] | None = None,
    progress: Callable[[Tally], None] | None = None,
    progress_seconds: float = 30.0,
) -> Tally:
    """Run ``trials`` (until ``deadline``, a ``time.monotonic()`` value) into ``tally``.

    ``progress(tally)`` is called at most every ``progress_seconds``.
    """
    saved = saved if saved is not None else Counter()
    start = time.perf_counter()
    last = time.monotonic()
    for trial in trials:
        now = time.monotonic()
        if deadline is not None and now > deadline:
            break
        if progress is not None and now - last > progress_seconds:
            last = now
            progress(tally)
        record = supervisor.run(trial)
        if crash_dir is not None and record["outcome"] in BAD_OUTCOMES:
            sig = signature(record)
            if saved[sig] < SAVED_PER_CLASS:
                saved[sig] += 1
                record["saved"] = str(save_input(supervisor.fixture_dir, trial, record, crash_dir))
        tally.add(record, trial.mutation)
    tally.seconds += time.perf_counter() - start
    return tally


def save_input(fixture_dir: Path, trial: Trial, record: dict[str, Any], out: Path) -> Path:
    """Regenerate the exact input of ``trial`` and write it (``.npz`` + ``.json``) to ``out``.

    Returns:
        The path of the ``.json`` description (the ``.npz`` sits next to it).
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{trial.target}-{trial.seed}-{trial.index}"
    arrays: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    if trial.target in ENVELOPE_TARGETS:
        inp = apply_envelope(
            trial.mutation, fuzz_fixtures.load_envelope_fixture(fixture_dir, trial.target)
        )
        payload = inp.payload
        if isinstance(payload, list | tuple):
            for i, a in enumerate(payload):
                if isinstance(a, np.ndarray):
                    arrays[f"payload_{i}"] = a
                elif isinstance(a, bytes):
                    arrays[f"payload_{i}"] = np.frombuffer(a, np.uint8)
        extra = {
            "total_weight": inp.total_weight,
            "shapes": [list(s) for s in inp.shapes],
            "mutated_first": inp.mutated_first,
            "payload_type": type(payload).__name__,
        }
    else:
        hin = apply_holder(
            trial.mutation, fuzz_fixtures.load_holder_fixture(fixture_dir, trial.target)
        )
        arrays["context"] = np.frombuffer(hin.context, np.uint8)
        for i, ct in enumerate(hin.ciphertexts):
            arrays[f"ct_{i}"] = np.frombuffer(ct, np.uint8)
        extra = {
            "layer": hin.layer,
            "layout": hin.layout,
            "rows": hin.rows,
            "features": hin.features,
        }
    save_npz: Any = np.savez_compressed  # numpy stubs: ** would also fill allow_pickle
    save_npz(stem.with_suffix(".npz"), **arrays)
    desc = {
        "trial": trial.key(),
        "target": trial.target,
        "seed": trial.seed,
        "index": trial.index,
        "mutation": trial.mutation,
        "described": describe(trial.mutation),
        "fixtures": str(fixture_dir),
        "outcome": {k: v for k, v in record.items() if k not in ("saved",)},
        "input": extra,
        "replay": (
            f".venv/bin/python tests/fuzz/campaign.py --fixtures {fixture_dir} "
            f"--replay {trial.key()}"
        ),
    }
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(desc, indent=1, default=str))
    return path


__all__ = [
    "BAD_OUTCOMES",
    "OUTCOMES",
    "Supervisor",
    "Tally",
    "Trial",
    "failure_report",
    "normalise",
    "run_trials",
    "save_input",
    "signature",
]
