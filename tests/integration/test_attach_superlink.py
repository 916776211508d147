"""``fedai server --superlink HOST:PORT``: a run on a SuperLink fedai did not start.

The test plays the organisation's operator: it starts ``flower-superlink`` itself (as a
separate process on 127.0.0.1, its own database and Flower home), and two ``fedai
client`` agents with their own CSVs. ``fedai server --superlink`` then runs the
experiment on that SuperLink and must leave it running:

1. ``--insecure``: 2 rounds, exit 0, results.json has both rounds, the SuperLink is alive
   after ``fedai server`` exited.
2. TLS and SuperNode authentication: a root certificate of another CA is refused (exit 2)
   before anything is submitted; node-1's key is registered by the "operator" with
   ``flwr supernode register``, node-2's with ``fedai server --register`` (the only keys
   it registers when attached); 2 rounds, exit 0, the SuperLink alive afterwards.
3. Interrupted and resumed: ``fedai server`` SIGTERMed after round 1 is checkpointed stops
   only its ``flwr run`` (exit 130) and prints the ``flwr stop`` command; the test runs
   that command, and the same ``fedai server`` command again resumes the run from its
   checkpoint and finishes every round.
4. Refusals before anything runs: nothing listening (exit 2, the address named);
   ``--superlink`` with ``--address`` / ``--state`` (exit 2, both options named).

Every process is started here and stopped by its PID in ``finally`` (plus any grandchild
found by this test's own tmp_path in its command line).
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from real_nodes_kit import (
    BIN,
    SITES,
    Processes,
    descendants,
    fedai,
    flower_test_env,
    free_port,
    kill_leftovers,
    wait_until,
    write_sites,
)

from fedai.checkpoint import Checkpoint

pytestmark = pytest.mark.integration

RUN_SECONDS = 300  # an upper bound for one `fedai server` run, not a performance check
LINK_START_SECONDS = 90  # flower-superlink (uvicorn + migrations) on a busy 2-core machine
STOP_COMMAND = re.compile(r"Stop it with: (FLWR_HOME=\S+ \S+ stop (\d+) \S+) \(then delete")


def experiment(path: Path, *, rounds: int) -> Path:
    path.write_text(
        f'[experiment]\nname = "attach"\nseed = 7\nrounds = {rounds}\n'
        "num_clients = 2\nclients_per_round = 2\n"
        '[model]\nname = "mlp"\nhidden = 16\n'
        "[train]\nlocal_epochs = 1\nbatch_size = 32\nlr = 0.1\n",
        encoding="utf-8",
    )
    return path


class SuperLink:
    """A ``flower-superlink`` the test runs as the organisation would; stopped by PID."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *, certs: Path | None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--database", str(tmp_path / "operator-link.db")]
        argv += ["--disable-runtime-dependency-installation"]
        if certs is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(certs / "ca.crt")]
            argv += ["--ssl-certfile", str(certs / "server.pem")]
            argv += ["--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]
        self.log_path = tmp_path / "operator-link.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=tmp_path,
                env={**env, "FLWR_HOME": str(tmp_path / "operator-home")},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_listening(self) -> None:
        def listening() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, timeout=LINK_START_SECONDS, what="flower-superlink", poll=0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def serverapps(self) -> list[int]:
        """PIDs of the ServerApp processes this SuperLink (its SuperExec) runs."""
        found = []
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    def stop(self) -> None:
        """SIGTERM, SIGINT (uvicorn can hang on the first), then SIGKILL, by PID."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGINT, 5), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)


def start_clients(
    procs: Processes, sites: dict[str, Path], address: str, *, certs: Path | None
) -> None:
    for i, site in enumerate(SITES[:2], start=1):
        tls = ("--insecure",) if certs is None else ("--certs", str(certs / "nodes" / f"node-{i}"))
        procs.start(
            site,
            "client",
            "--server",
            address,
            *tls,
            "--data",
            str(sites[site]),
            "--client-id",
            site,
            "--state",
            f"state/{site}",
        )


def check_two_rounds(out: Path) -> None:
    doc = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert all(r["status"] == "ok" for r in doc["rounds"]), doc["rounds"]
    assert all(sorted(r["trained"]) == list(SITES[:2]) for r in doc["rounds"]), doc["rounds"]


@pytest.mark.slow
def test_attached_insecure_runs_and_leaves_the_superlink_running(tmp_path):
    # Arrange: the operator's SuperLink, two agents
    sites = write_sites(tmp_path)
    env = flower_test_env(tmp_path)
    config = experiment(tmp_path / "run.toml", rounds=2)
    out = tmp_path / "out"
    procs = Processes(tmp_path, env)
    link = SuperLink(tmp_path, env, certs=None)
    try:
        link.wait_listening()
        start_clients(procs, sites, link.address, certs=None)
        # Act
        server = procs.start(
            "server",
            "server",
            "--config",
            str(config),
            "--superlink",
            link.address,
            "--insecure",
            "--out",
            str(out),
        )
        code = server.wait(timeout=RUN_SECONDS)
        alive_after = link.alive()
    finally:
        procs.stop_all()
        link.stop()
        kill_leftovers(str(tmp_path))

    # Assert
    text = procs.text("server")
    assert code == 0, text
    check_two_rounds(out)
    assert alive_after, "fedai server stopped a SuperLink it did not start"
    assert f"attached to the SuperLink at {link.address}" in text
    assert "SuperLink PID" not in text  # it started none
    assert "not registered here" in text


@pytest.mark.slow
def test_attached_tls_with_node_auth_registers_only_what_it_is_given(tmp_path):
    # Arrange: certificates (the federation's and another CA's), the operator's SuperLink
    sites = write_sites(tmp_path)
    env = flower_test_env(tmp_path)
    for args in (
        ("certs", "--out", "certs", "--address", "127.0.0.1", "--nodes", "2"),
        ("certs", "--out", "other", "--address", "127.0.0.1", "--nodes", "1"),
    ):
        made = fedai(env, tmp_path, *args)
        assert made.returncode == 0, made.stdout + made.stderr
    certs = tmp_path / "certs"
    config = experiment(tmp_path / "run.toml", rounds=2)
    out = tmp_path / "out"
    procs = Processes(tmp_path, env)
    link = SuperLink(tmp_path, env, certs=certs)
    try:
        link.wait_listening()
        # ... the operator registers node-1 with Flower's own CLI
        from fedai.federation.deploy import write_cli_config

        operator_home = tmp_path / "operator-cli"
        write_cli_config(operator_home, address=link.address, root_cert=certs / "ca.crt")
        registered = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", "certs/nodes/node-1/node.pub", "fedai"],
            cwd=tmp_path,
            env={**env, "FLWR_HOME": str(operator_home)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
        start_clients(procs, sites, link.address, certs=certs)
        attach = ("server", "--config", str(config), "--superlink", link.address)
        # Act 1: another CA's root certificate is refused before anything is submitted
        wrong = fedai(env, tmp_path, *attach, "--root-cert", "other/ca.crt", "--out", "wrong")
        # Act 2: the run, registering node-2's key itself
        server = procs.start(
            "server",
            *attach,
            "--certs",
            "certs",
            "--register",
            "certs/nodes/node-2/node.pub",
            "--out",
            str(out),
        )
        code = server.wait(timeout=RUN_SECONDS)
        alive_after = link.alive()
    finally:
        procs.stop_all()
        link.stop()
        kill_leftovers(str(tmp_path))

    # Assert
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert link.address in wrong.stderr
    assert "does not verify" in wrong.stderr
    assert not (tmp_path / "wrong").exists()
    text = procs.text("server")
    assert code == 0, text
    check_two_rounds(out)
    assert alive_after, "fedai server stopped a SuperLink it did not start"
    assert "TLS verified with" in text
    assert "node node-2:" in text
    assert "node node-1:" not in text  # certs/nodes/node-1 is not registered when attached


@pytest.mark.slow
def test_attached_run_interrupted_then_resumed(tmp_path):
    # Arrange
    sites = write_sites(tmp_path)
    env = flower_test_env(tmp_path)
    config = experiment(tmp_path / "run.toml", rounds=3)
    out = tmp_path / "out"
    procs = Processes(tmp_path, env)
    link = SuperLink(tmp_path, env, certs=None)
    attach = ("--config", str(config), "--superlink", link.address, "--insecure")
    attach += ("--out", str(out))
    try:
        link.wait_listening()
        start_clients(procs, sites, link.address, certs=None)
        first = procs.start("server-1", "server", *attach)

        def checkpointed() -> bool:
            ckpt = Checkpoint.find(out)
            return first.poll() is not None or (ckpt is not None and ckpt.round >= 1)

        wait_until(checkpointed, timeout=RUN_SECONDS, what="round 1's checkpoint", poll=0.2)
        assert first.poll() is None, procs.text("server-1")
        # Act 1: SIGTERM fedai server: it stops its flwr run, not the SuperLink
        os.kill(first.pid, signal.SIGTERM)
        first_code = first.wait(timeout=60)
        alive_after_interrupt = link.alive()
        stop_line = STOP_COMMAND.search(procs.text("server-1"))
        assert stop_line is not None, procs.text("server-1")
        # ... the printed command stops the run on the SuperLink
        home, flwr_bin, *rest = shlex.split(stop_line.group(1))
        stopped = subprocess.run(
            [flwr_bin, *rest],
            env={**env, "FLWR_HOME": home.removeprefix("FLWR_HOME=")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        kept = Path(home.removeprefix("FLWR_HOME=")).parent  # the CLI home, kept for this
        assert kept.name.startswith("fedai-server-"), kept
        shutil.rmtree(kept)
        wait_until(
            lambda: not link.serverapps(), timeout=120, what="the stopped run's ServerApp", poll=0.5
        )
        resumed_after = Checkpoint.find(out).round
        # Act 2: the same command again
        second = procs.start("server-2", "server", *attach)
        second_code = second.wait(timeout=RUN_SECONDS)
        alive_after = link.alive()
    finally:
        procs.stop_all()
        link.stop()
        kill_leftovers(str(tmp_path))

    # Assert
    assert first_code == 130, procs.text("server-1")
    assert alive_after_interrupt
    assert "may still be live" in procs.text("server-1")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert second_code == 0, procs.text("server-2")
    assert f"after round {resumed_after}" in procs.text("server-2")
    doc = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert doc["rounds"][-1]["status"] == "ok", doc["rounds"]
    assert alive_after


def free_address() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_attach_to_nothing_listening_exits_2_naming_the_address(tmp_path, tls):
    env = flower_test_env(tmp_path)
    config = experiment(tmp_path / "run.toml", rounds=1)
    if tls:
        made = fedai(env, tmp_path, "certs", "--out", "certs", "--nodes", "1")
        assert made.returncode == 0, made.stdout + made.stderr
    address = free_address()
    proc = fedai(
        env,
        tmp_path,
        "server",
        "--config",
        str(config),
        "--superlink",
        address,
        *(("--certs", "certs") if tls else ("--insecure",)),
        "--out",
        "out",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no SuperLink answers at {address}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line
    assert not (tmp_path / "out").exists()


def test_attach_refuses_options_that_start_a_superlink(tmp_path):
    env = flower_test_env(tmp_path)
    proc = fedai(
        env,
        tmp_path,
        "server",
        "--superlink",
        free_address(),
        "--insecure",
        "--address",
        free_address(),
        "--state",
        "link",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--superlink and --address exclude each other" in proc.stderr
    assert "--superlink and --state exclude each other" in proc.stderr
    assert not (tmp_path / "link").exists()
