"""Shared helpers for the real-node tests (``fedai certs`` / ``server`` / ``client``).

Processes started here run in their own session (process group) and are stopped by PID.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedai.federation.deploy import free_port as free_port  # the kit's tests import it here

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITES = ("site-1", "site-2", "site-3")


def write_sites(tmp_path: Path) -> dict[str, Path]:
    """A third of the digits per site, shuffled with a fixed seed, as CSV with a label."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    paths = {}
    header = ",".join([f"px{j}" for j in range(x.shape[1])] + ["label"])
    for site, part in zip(SITES, np.array_split(order, len(SITES)), strict=True):
        rows = np.column_stack([x[part], y[part]]).astype(int)
        path = tmp_path / f"{site}.csv"
        np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")
        paths[site] = path
    return paths


def flower_test_env(tmp_path: Path) -> dict[str, str]:
    """The environment for fedai commands: FLWR_HOME in ``tmp_path``, no telemetry."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


class Processes:
    """Processes started by the test; each stopped by its PID."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = (self.tmp_path / f"{name}.out").open("ab")
        err = (self.tmp_path / f"{name}.err").open("ab")
        proc = subprocess.Popen(
            [str(BIN / "fedai"), *args],
            cwd=self.tmp_path,
            env=self.env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        out.close()
        err.close()
        self.procs.append(proc)
        return proc

    def text(self, name: str) -> str:
        parts = [self.tmp_path / f"{name}.out", self.tmp_path / f"{name}.err"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a session the test created); gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def fedai(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fedai"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pids_mentioning(marker: str) -> list[int]:
    """PIDs of this user's processes whose command line contains ``marker``.

    ``marker`` is a test's own ``tmp_path``: it finds the grandchildren a SIGKILLed
    ``fedai`` command could leave behind (``flwr run --stream``, a SuperNode), never
    anything else.
    """
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def kill_leftovers(marker: str) -> list[int]:
    """SIGKILL, by PID, every process :func:`pids_mentioning` ``marker``; return them."""
    pids = pids_mentioning(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid``, its process group and every descendant (each in its own session,
    as fedai starts Flower's programs); return the descendants' PIDs."""
    tree = descendants(pid)
    kill_group(pid)
    for child in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    return tree
