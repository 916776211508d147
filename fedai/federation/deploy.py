"""Flower's Deployment Engine driven from fedai: processes, CLI config, runs, statuses.

``fedai server`` and ``fedai client`` (:mod:`fedai.commands.deploy`) are built from these
pieces. Everything goes through Flower's own programs and files:

- ``flower-superlink`` (coordinator) and ``flower-supernode`` (one per organisation) run
  as child processes in their own session; :func:`stop_child` stops one by its PID
  (SIGTERM, then SIGINT: uvicorn can hang on the first while a log stream is attached,
  then SIGKILL), never by name;
- the ``flwr`` CLI reads its federation from ``$FLWR_HOME/config.toml``
  (:func:`write_cli_config`); it registers node public keys
  (``flwr supernode register``), submits the run (``flwr run --stream``) and reports its
  status (``flwr ls --format json``): ``flwr run`` itself exits 0 even when the run
  failed.

Nothing here imports Flower's Python API: the programs are Flower's, the glue is fedai's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedai.errors import ConfigError, FedAIError

logger = logging.getLogger(__name__)

FEDERATION = "fedai"  # the federation name in $FLWR_HOME/config.toml
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*[: ]\s*([\w.]*)")
FEDAI_LOGGERS = ("fedai", "server", "clients")
ALREADY_REGISTERED = "Public key already in use"  # flwr 1.41's "[code: 23]" answer
STOP_GRACE_SECONDS = 15.0


def flower_bin(name: str) -> str:
    """The path of a Flower program (``flwr``, ``flower-superlink``, ...).

    The one installed beside this Python comes first (a venv need not be on PATH).

    Raises:
        ConfigError: it is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} must be installed (it comes with flwr); not found on PATH")
    return found


def flower_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower's programs: its own ``FLWR_HOME``, offline-safe settings."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------- child processes
@dataclass(slots=True)
class Child:
    """A process fedai started; stopped by :func:`stop_child` through its PID."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The child's PID."""
        return int(self.proc.pid)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log, ANSI colours removed."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])


def start_child(
    name: str, argv: list[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> Child:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError:
        log.close()
        raise
    logger.info("started %s (PID %d): %s", name, proc.pid, " ".join(argv))
    return Child(name=name, proc=proc, log_path=log_path, _log=log)


def stop_child(child: Child, *, grace: float = STOP_GRACE_SECONDS) -> int | None:
    """Stop ``child`` by its PID: SIGTERM, then SIGINT, then SIGKILL; return its exit code.

    Flower's programs stop their own children (SuperExec, ServerApp, ClientApp) when they
    exit (a parent-PID watch), so only the PID fedai started is signalled.
    """
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGINT, grace / 3), (None, 10.0)):
            if child.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL if sig is None else sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=wait)
        code = child.proc.poll()
        logger.info("stopped %s (PID %d), exit code %s", child.name, child.pid, code)
        return code
    finally:
        if child._log is not None:
            child._log.close()
            child._log = None


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to append started children to; every one is stopped on exit, newest first."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            stop_child(child)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into ``KeyboardInterrupt`` so ``finally`` blocks run."""

    def raise_interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def split_address(address: str, *, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) -> (host, port).

    Raises:
        ConfigError: not of that form, or the port is out of range.
    """
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT with a port in 1..65535; got {address!r}")
    return host, int(port_text)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, *, deadline: float, child: Child | None = None) -> None:
    """Wait until something listens on ``host:port``.

    Raises:
        FedAIError: ``child`` exited first (its log tail is in the message), or nothing
            listened by ``deadline`` (a ``time.monotonic()`` value).
    """
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise FedAIError(
                f"{child.name} exited with code {child.proc.returncode} before listening on "
                f"{host}:{port}; its log ({child.log_path}) ends with:\n{child.tail()}"
            )
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FedAIError(f"nothing listened on {host}:{port} in time")


# ---------------------------------------------------------------------- TLS check
def check_tls(host: str, port: int, *, root_cert: Path, deadline: float) -> None:
    """Check that the SuperLink's certificate verifies against ``root_cert`` for ``host``.

    Connection refusals are retried until ``deadline`` (the SuperLink may start later);
    a certificate that does not verify is final.

    Raises:
        ConfigError: the certificate does not verify (wrong CA, or ``host`` not in its
            subjectAltName), or ``root_cert`` is not a readable PEM certificate.
        FedAIError: nothing answered before ``deadline``.
    """
    try:
        context = ssl.create_default_context(cafile=str(root_cert))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"root certificate {root_cert} must be a readable PEM CA certificate: {err}"
        ) from err
    said_waiting = False
    while True:
        try:
            with (
                socket.create_connection((host, port), timeout=5.0) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except ssl.SSLCertVerificationError as err:
            raise ConfigError(
                f"the SuperLink at {host}:{port} presented a certificate that {root_cert} "
                f"does not verify ({err.verify_message}): the root certificate must be the "
                f"federation's CA, and {host!r} must be in the server certificate"
            ) from err
        except ssl.SSLError as err:
            raise ConfigError(f"TLS with the SuperLink at {host}:{port} failed: {err}") from err
        except OSError as err:
            if time.monotonic() >= deadline:
                raise FedAIError(
                    f"the SuperLink at {host}:{port} did not answer in time: {err}"
                ) from err
            if not said_waiting:
                logger.warning("waiting for the SuperLink at %s:%d (%s)", host, port, err)
                said_waiting = True
            time.sleep(1.0)


def check_superlink(host: str, port: int, *, root_cert: Path | None, timeout: float) -> None:
    """Check that a SuperLink someone else runs answers at ``host:port``.

    With ``root_cert`` the answer must be TLS with a certificate that ``root_cert``
    verifies for ``host`` (:func:`check_tls`); without, a TCP connection is enough.
    Refused connections are retried for ``timeout`` seconds, no longer: a SuperLink one
    attaches to is already running.

    Raises:
        ConfigError: nothing answered in time, the TLS handshake failed, or the
            certificate does not verify.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(timeout, 0.1))):
                break
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"no SuperLink answers at {host}:{port} ({err}); it must be running, "
                    "and HOST:PORT must be its address (flower-superlink's --host/--port, "
                    "`address` in Flower's config)"
                ) from err
        time.sleep(0.5)
    if root_cert is not None:
        try:
            check_tls(host, port, root_cert=root_cert, deadline=time.monotonic() + timeout)
        except ConfigError:
            raise
        except FedAIError as err:  # it stopped answering between the two connections
            raise ConfigError(f"the SuperLink at {host}:{port} stopped answering: {err}") from err


# ---------------------------------------------------------------------- flwr CLI
def write_cli_config(
    home: Path, *, address: str, root_cert: Path | None, federation: str = FEDERATION
) -> Path:
    """Write ``$FLWR_HOME/config.toml`` naming one SuperLink (TLS or ``insecure``)."""
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{federation}"',
        f"[superlink.{federation}]",
        f'address = "{address}"',
    ]
    if root_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(root_cert.resolve()))}")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flwr(
    args: list[str], *, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the ``flwr`` CLI and capture its output (ANSI colours removed)."""
    proc = subprocess.run(
        [flower_bin("flwr"), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    proc.stdout = _ANSI.sub("", proc.stdout)
    proc.stderr = _ANSI.sub("", proc.stderr)
    return proc


def _json_of(text: str) -> Any:
    """The JSON document in a ``flwr ... --format json`` output (None if there is none)."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


def register_node(
    public_key: Path, name: str, *, env: Mapping[str, str], federation: str = FEDERATION
) -> str:
    """Register one node's public key with the SuperLink; return Flower's answer.

    A key the SuperLink's database already holds (a restarted coordinator) counts as
    registered.

    Raises:
        FedAIError: Flower refused (the message says why).
    """
    proc = flwr(["supernode", "register", str(public_key), federation, "--name", name], env=env)
    text = (proc.stdout + proc.stderr).strip()
    if ALREADY_REGISTERED in text:
        return "already registered"
    if proc.returncode != 0:
        raise FedAIError(f"flwr supernode register {public_key} refused it: {text[-500:]}")
    return text.splitlines()[-1] if text else "registered"


def keep_line(line: str, *, verbose: bool) -> bool:
    """Whether a line of ``flwr run --stream`` is worth showing an operator.

    Kept: fedai's own log lines (loggers ``fedai``, ``server``, ``clients``), anything at
    WARNING or above, tracebacks and other unlabelled text. Dropped: other libraries' INFO
    and DEBUG lines (Flower's start-up chatter, one httpx line per HTTP request).
    """
    text = _ANSI.sub("", line).rstrip()
    if verbose:
        return True
    if not text.strip():
        return False
    if text.lstrip().startswith("{"):  # a JSON log record (fedai's structured logs)
        return True
    match = _LEVEL_LINE.match(text)
    if match is None:
        return True
    level, name = match.groups()
    if level in ("WARNING", "ERROR", "CRITICAL"):
        return True
    return name.split(".")[0] in FEDAI_LOGGERS


def submit_run(
    app_dir: Path,
    run_config: Mapping[str, str] | Path,
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    federation: str = FEDERATION,
    alive: Callable[[], bool] | None = None,
) -> tuple[int | None, int]:
    """``flwr run APP FEDERATION --stream --run-config ...``; stream its lines to ``on_line``.

    ``run_config``: ``key=value`` pairs, or a ``.toml`` file the ``flwr`` CLI reads
    itself (its values travel with the run to the SuperLink). ``alive`` (optional) is
    asked between lines; when it turns False (the SuperLink died) the CLI is stopped.
    Stopping the CLI (here, or by its PID) leaves the run itself on the SuperLink.
    Returns (run id or None, the CLI's exit code).
    """
    if isinstance(run_config, Path):
        if run_config.suffix != ".toml":
            raise ConfigError(f"a run-config file must end in .toml; got {run_config}")
        given = str(run_config.resolve())
    else:
        given = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())
    argv = [flower_bin("flwr"), "run", str(app_dir), federation, "--stream"]
    argv += ["--run-config", given]
    proc = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=app_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    run_id: int | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = RUN_STARTED.search(_ANSI.sub("", line))
            if found and run_id is None:
                run_id = int(found.group(1))
            on_line(line.rstrip("\n"))
            if alive is not None and not alive():
                break
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return run_id, int(proc.returncode)


def run_status(run_id: int, *, env: Mapping[str, str], federation: str = FEDERATION) -> str:
    """The run's status as ``flwr ls`` reports it (e.g. ``finished:completed``), or ""."""
    proc = flwr(["ls", federation, "--run-id", str(run_id), "--format", "json"], env=env)
    doc = _json_of(proc.stdout)
    runs = doc.get("runs", []) if isinstance(doc, dict) else []
    for run in runs if isinstance(runs, list) else []:
        if isinstance(run, dict) and str(run.get("run-id", run.get("run_id", ""))) == str(run_id):
            return str(run.get("status", ""))
    return ""


def wait_for_status(
    run_id: int, *, env: Mapping[str, str], timeout: float = 60.0, federation: str = FEDERATION
) -> str:
    """Poll :func:`run_status` until the run is ``finished:...`` or ``timeout`` passes."""
    end = time.monotonic() + timeout
    status = ""
    while time.monotonic() < end:
        status = run_status(run_id, env=env, federation=federation)
        if status.startswith("finished"):
            return status
        time.sleep(1.0)
    return status


__all__ = [
    "FEDERATION",
    "Child",
    "check_superlink",
    "check_tls",
    "children",
    "flower_bin",
    "flower_env",
    "flwr",
    "free_port",
    "keep_line",
    "register_node",
    "run_status",
    "signals_as_interrupt",
    "split_address",
    "start_child",
    "stop_child",
    "submit_run",
    "wait_for_port",
    "wait_for_status",
]
