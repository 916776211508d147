"""``fedai certs``, ``fedai server`` and ``fedai client``: a real federation, one command each.

- ``fedai certs --out DIR --address 127.0.0.1 --nodes 3``: a CA, the SuperLink's
  certificate and one SuperNode auth key per node (:mod:`fedai.commands.certs`).
- ``fedai server --config FILE --certs DIR``: starts Flower's ``flower-superlink`` (TLS
  and SuperNode authentication on, a state database), registers the node keys found in
  ``DIR/nodes/*/node.pub``, submits the experiment with ``flwr run``, streams fedai's log
  lines, stops the SuperLink by its PID and exits with the run's outcome.
  With ``--superlink HOST:PORT`` it attaches to a SuperLink an organisation already runs
  instead: it checks that one answers (and its certificate), registers no node keys
  unless given ``--register``, submits and follows the run the same way, and never stops
  that SuperLink (interrupted, it stops only its ``flwr run`` and says how to stop the
  run).
- ``fedai client --server HOST:PORT --certs DIR/nodes/NAME --data FILE --client-id ID
  --state DIR``: starts Flower's ``flower-supernode`` for one organisation (its node
  config: data file, client id, key and ledger directories) and runs the ClientApp in
  this process for every message (:mod:`fedai.federation.agent`), until stopped.

Every child process is stopped by its PID when the command ends, however it ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedai.commands import add_config_arguments
from fedai.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ConfigError,
    DataError,
    FedAIError,
)

if TYPE_CHECKING:
    from fedai.config import ExperimentConfig
    from fedai.federation.agent import TaskReport
    from fedai.federation.deploy import Child

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:9093"
DEFAULT_SERVER_STATE = "fedai-server"
STARTUP_SECONDS = 90.0  # the SuperLink (uvicorn + migrations) on a busy 2-core machine
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_FLOWER_CODE = re.compile(r"\[code: (\d+)\][^\n]*")
_FLOWER_EXIT = re.compile(r"Exit Code: (\d+)")
#: Flower's API error codes a SuperNode can exit with, in an operator's words.
_REFUSALS = {
    "2001": "the SuperLink requires node authentication and this node sent no auth key",
    "2004": "the SuperLink does not know this node's public key (not registered)",
}


def register(sub: Any) -> None:
    """Add ``certs``, ``server`` and ``client``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "certs",
        help="make a CA, the SuperLink's certificate and node auth keys",
        description="Make what a TLS federation with SuperNode authentication needs: a CA, "
        "the SuperLink's certificate for the given addresses, and one ECDSA P-384 auth key "
        "per node (OpenSSH format) in nodes/<name>/ with the CA certificate beside it.",
        epilog="example:\n  fedai certs --out certs --address 127.0.0.1 --nodes 3",
        formatter_class=fmt,
    )
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write into")
    p.add_argument(
        "--address",
        action="append",
        metavar="HOST",
        help="an IP address or DNS name nodes use to reach the SuperLink; repeatable "
        "(default: 127.0.0.1 and localhost)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--nodes", type=int, metavar="N", help="N node keys: node-1..node-N")
    group.add_argument("--node", action="append", metavar="NAME", help="a named node key")
    p.add_argument("--force", action="store_true", help="replace an existing CA in --out")
    p.set_defaults(func=run_certs)

    p = sub.add_parser(
        "server",
        help="run an experiment on real nodes: SuperLink + flwr run",
        description="Start a Flower SuperLink (TLS and node authentication unless "
        "--insecure), register the node keys in --certs, run the experiment on the nodes "
        "that connect (fedai client), stream its progress and exit with its outcome. "
        "Results (results.json, model, plots) go to --out.\n\n"
        "With --superlink HOST:PORT, attach to a SuperLink that is already running "
        "instead: nothing is started but the run (flwr run), and that SuperLink is never "
        "stopped. Node keys are then NOT registered (the SuperLink's operator does that) "
        "unless given with --register.",
        epilog="examples:\n  fedai server --config experiments/quickstart.toml --certs certs "
        "--out runs/site-run --set experiment.num_clients=3\n"
        "  fedai server --config experiments/quickstart.toml --superlink link.example.org:9093 "
        "--root-cert ca.crt --out /shared/runs/site-run\n\n"
        "The same command with the same --out after a crash resumes the run.",
        formatter_class=fmt,
    )
    add_config_arguments(p, config_help="experiment TOML (see experiments/)")
    p.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="attach to this running SuperLink (its address: flower-superlink's "
        "--host/--port, Flower's `address`) instead of starting one; excludes --address "
        "and --state",
    )
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        help=f"where the SuperLink fedai server starts listens (default {DEFAULT_ADDRESS})",
    )
    _add_tls_options(
        p,
        certs_help="directory made by fedai certs (ca.crt, server.pem, ...; with "
        "--superlink only ca.crt is used)",
    )
    p.add_argument(
        "--root-cert",
        metavar="FILE",
        help="with --superlink: the CA certificate that verifies the SuperLink's "
        "certificate (default: ca.crt in --certs)",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        help="the started SuperLink's database, FLWR_HOME and logs "
        f"(default ./{DEFAULT_SERVER_STATE})",
    )
    p.add_argument("--out", metavar="DIR", help="results directory (default runs/<time>-<name>)")
    p.add_argument("--key-dir", metavar="DIR", help="the coordinator's key directory (HE)")
    p.add_argument(
        "--register",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="also register this node public key (OpenSSH format); repeatable. With "
        "--superlink the only keys registered",
    )
    p.add_argument("--app", metavar="DIR", help="the Flower App directory (default: fedai's)")
    p.set_defaults(func=run_server)

    p = sub.add_parser(
        "client",
        help="run one organisation's node (SuperNode + ClientApp) until stopped",
        description="Start a Flower SuperNode for this organisation and serve the "
        "coordinator's messages with fedai's ClientApp, kept loaded in this process. "
        "The data file, keys and privacy ledger stay on this machine. Stop it with "
        "SIGTERM or Ctrl-C.",
        epilog="example:\n  fedai client --server 127.0.0.1:9093 --certs certs/nodes/node-1 "
        "--data site1.csv --client-id site-1 --state state/site-1",
        formatter_class=fmt,
    )
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the SuperLink")
    p.add_argument("--data", required=True, metavar="FILE", help="this node's .csv/.npz")
    p.add_argument("--client-id", required=True, metavar="ID", help="a stable name")
    p.add_argument("--state", required=True, metavar="DIR", help="ledger and agent files")
    p.add_argument("--keys", metavar="DIR", help="this node's key directory (HE schemes)")
    _add_tls_options(p, certs_help="this node's bundle from fedai certs (ca.crt, node.key)")
    p.add_argument("--root-cert", metavar="FILE", help="the federation's CA certificate")
    p.add_argument("--auth-key", metavar="FILE", help="this node's private auth key")
    p.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another node-config key (node policy, e.g. min-noise-multiplier=1.0, or "
        "torch-threads=2); repeatable",
    )
    p.add_argument(
        "--isolation",
        choices=("process", "subprocess"),
        default="process",
        help="process (default): one long-running ClientApp in this process; "
        "subprocess: Flower's default, a new flwr-clientapp process per message",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often the idle SuperNode asks the SuperLink for work (default 0.2; "
        "3 = Flower unchanged)",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="while this long after start the SuperLink refuses the node's key (not "
        "registered yet), try again every 5 s; then give up (default 60)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up if the SuperLink does not answer in time (default: wait)",
    )
    p.set_defaults(func=run_client)


def _add_tls_options(p: argparse.ArgumentParser, *, certs_help: str) -> None:
    p.add_argument("--certs", metavar="DIR", help=certs_help)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no node authentication (loopback experiments only)",
    )


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _verbose(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", 0) or getattr(args, "verbose_after", 0))


# ---------------------------------------------------------------------- certs
def run_certs(args: argparse.Namespace) -> int:
    """Execute ``fedai certs``."""
    from fedai.commands.certs import make_federation_certs, node_names

    if args.nodes is not None and not 1 <= args.nodes <= 1000:
        raise ConfigError(f"--nodes must be in 1..1000; got {args.nodes}")
    names = args.node or node_names(args.nodes if args.nodes is not None else 3)
    addresses = args.address or ["127.0.0.1", "localhost"]
    out = Path(args.out)
    made = make_federation_certs(out, addresses=addresses, nodes=names, overwrite=args.force)
    print(f"CA:                 {made.ca_cert}  (its key ca.key stays with you, 0600)")
    print(f"SuperLink cert:     {made.server_cert}  for {', '.join(addresses)}")
    for name, path in made.nodes.items():
        print(f"node {name + ':':<13} {path}/  (ca.crt, node.key 0600, node.pub)")
    print(
        "\nGive each organisation its nodes/<name>/ directory. `fedai server --certs "
        f"{out}` registers every nodes/*/node.pub itself; by hand (SuperLink running, "
        "FLWR_HOME of the server):"
    )
    for name, path in made.nodes.items():
        print(f"  flwr supernode register {path}/node.pub fedai --name {name}")
    return EXIT_OK


# ---------------------------------------------------------------------- server
def run_server(args: argparse.Namespace) -> int:
    """Execute ``fedai server``."""
    if args.superlink:
        from fedai.commands.attach import run_attached

        return run_attached(args)
    from fedai.commands.certs import CA_CERT, SERVER_CERT, SERVER_KEY, node_public_keys
    from fedai.federation import deploy
    from fedai.fileio import make_dir
    from fedai.results import default_run_dir

    if args.root_cert:
        raise ConfigError(
            "--root-cert applies only with --superlink; a SuperLink fedai server starts "
            "is verified with ca.crt in --certs"
        )
    cfg = _server_config(args)
    host, port = deploy.split_address(args.address or DEFAULT_ADDRESS, what="--address")
    app_dir = _app_dir(args.app)
    certs = _server_certs(args)
    extra_keys = _register_keys(args)
    node_keys = {} if certs is None else node_public_keys(certs)
    node_keys.update(extra_keys)
    if certs is not None and not node_keys:
        raise ConfigError(
            f"no node public keys under {certs}/nodes/*/node.pub (or --register): with "
            "node authentication on, no node could join"
        )
    state = Path(args.state or DEFAULT_SERVER_STATE).resolve()
    make_dir(state, mode=0o700)
    out = Path(args.out) if args.out else default_run_dir(cfg.experiment.name)
    out = out.resolve()
    config_path = state / "experiments" / f"{out.name}.toml"
    write_experiment_toml(cfg, config_path)
    home = state / "flwr-home"
    root_cert = None if certs is None else certs / CA_CERT
    deploy.write_cli_config(home, address=f"{host}:{port}", root_cert=root_cert)
    env = deploy.flower_env(home)
    argv = [deploy.flower_bin("flower-superlink"), "--host", host, "--port", str(port)]
    argv += ["--database", str(state / "superlink.db"), "--disable-runtime-dependency-installation"]
    if certs is None:
        argv.append("--insecure")
        print("fedai server: --insecure: no TLS, no node authentication", file=sys.stderr)
    else:
        argv += ["--ssl-ca-certfile", str(certs / CA_CERT)]
        argv += ["--ssl-certfile", str(certs / SERVER_CERT)]
        argv += ["--ssl-keyfile", str(certs / SERVER_KEY), "--enable-supernode-auth"]
    quiet, verbose = _quiet(args), _verbose(args)

    def say(text: str) -> None:
        if not quiet:
            print(f"fedai server: {text}", flush=True)

    with deploy.signals_as_interrupt(), deploy.children() as started:
        try:
            link = deploy.start_child(
                "flower-superlink", argv, env=env, log_path=state / "superlink.log", cwd=state
            )
            started.append(link)
            say(f"SuperLink PID {link.pid} on {host}:{port}; log {link.log_path}")
            deploy.wait_for_port(
                host, port, deadline=time.monotonic() + STARTUP_SECONDS, child=link
            )
            for name, key in node_keys.items():
                say(f"node {name}: {deploy.register_node(key, name, env=env)}")
            say(f"run {cfg.experiment.name}: {cfg.experiment.rounds} rounds, results in {out}")

            def show(line: str) -> None:
                if not quiet and deploy.keep_line(line, verbose=verbose):
                    print(line, flush=True)

            submitted = time.time()
            run_id, code = deploy.submit_run(
                app_dir,
                {"config-file": str(config_path), "output.dir": str(out)},
                env=env,
                on_line=show,
                alive=link.alive,
            )
            if run_id is None:
                raise FedAIError(
                    f"flwr run did not start a run (exit code {code}); SuperLink log "
                    f"{link.log_path} ends with:\n{link.tail()}"
                )
            status = deploy.wait_for_status(run_id, env=env, timeout=60.0)
        except KeyboardInterrupt:
            print("fedai server: interrupted; stopping the SuperLink", file=sys.stderr)
            return EXIT_INTERRUPTED
    return _server_outcome(run_id, status, out, cfg, since=submitted)


def _server_outcome(
    run_id: int, status: str, out: Path, cfg: ExperimentConfig, *, since: float
) -> int:
    """Print the run's outcome and return the exit status (``flwr run`` itself says 0).

    ``since``: when the run was submitted (a results.json older than that is another
    run's).
    """
    results = out / "results.json"
    fresh = results.exists() and results.stat().st_mtime >= since
    judged = judge_results(results, cfg) if fresh else None
    if status != "finished:completed":
        why = f": {judged[1]}" if judged is not None and judged[1] else ""
        print(
            f"fedai server: run {run_id} ended {status or 'with an unknown status'}{why}"
            + (f" (results: {results})" if fresh else ""),
            file=sys.stderr,
        )
        return EXIT_FAILED
    if judged is None:
        print(f"fedai server: run {run_id} wrote no {results}", file=sys.stderr)
        return EXIT_FAILED
    verdict_code, reason, final = judged
    if verdict_code != EXIT_OK:
        print(f"fedai server: failed: {reason} (results: {results})", file=sys.stderr)
        return verdict_code
    acc = final.get("accuracy")
    shown = f"{acc:.4f}" if isinstance(acc, int | float) else "n/a"
    print(f"fedai server: run {run_id} finished: final accuracy {shown}; results: {results}")
    return EXIT_OK


def judge_results(results: Path, cfg: ExperimentConfig) -> tuple[int, str, dict[str, Any]]:
    """(exit status, reason, final figures) of a results.json, by :func:`fedai.verdict.judge`."""
    from fedai.results import RoundRecord, RunSummary
    from fedai.verdict import judge

    try:
        doc = json.loads(results.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(RoundRecord)}
        rounds = [RoundRecord(**{k: v for k, v in r.items() if k in names}) for r in doc["rounds"]]
        summary = RunSummary(
            config=doc["config"], rounds=rounds, stop_reason=str(doc.get("stop_reason", ""))
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        return EXIT_FAILED, f"{results} is unreadable: {err}", {}
    verdict = judge(
        summary, planned_rounds=cfg.experiment.rounds, num_clients=cfg.experiment.num_clients
    )
    final = doc.get("final", {})
    return verdict.exit_code, verdict.reason, final if isinstance(final, dict) else {}


def write_experiment_toml(cfg: ExperimentConfig, path: Path) -> Path:
    """Write ``cfg`` as an experiment TOML (unset values left out) and check it reads back.

    Raises:
        ConfigError: the written file does not give ``cfg`` back.
    """
    from fedai.config import ExperimentConfig
    from fedai.fileio import atomic_write

    lines: list[str] = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = json.dumps(value)
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    atomic_write(path, "\n".join(lines), mode=0o600)
    if ExperimentConfig.from_toml(path) != cfg:
        raise ConfigError(f"{path} does not read back as the experiment config")
    return path


def _app_dir(given: str | None) -> Path:
    """The Flower App to submit: ``--app``, else the directory holding fedai's server/.

    Raises:
        ConfigError: the directory has no pyproject.toml with ``[tool.flwr.app]``.
    """
    import tomllib

    if given:
        app = Path(given).resolve()
    else:
        import server

        app = Path(server.__file__).resolve().parent.parent
    try:
        data = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
        data["tool"]["flwr"]["app"]["components"]["serverapp"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as err:
        raise ConfigError(
            f"--app must be a Flower App directory (pyproject.toml with [tool.flwr.app]); "
            f"{app} is not ({type(err).__name__}: {err})"
        ) from err
    return app


def _server_certs(args: argparse.Namespace) -> Path | None:
    from fedai.commands.certs import CA_CERT, SERVER_CERT, SERVER_KEY

    if args.insecure:
        if args.certs:
            raise ConfigError("--certs and --insecure exclude each other")
        return None
    if not args.certs:
        raise ConfigError("--certs DIR (made by fedai certs) is required unless --insecure")
    certs = Path(args.certs).resolve()
    missing = [n for n in (CA_CERT, SERVER_CERT, SERVER_KEY) if not (certs / n).is_file()]
    if missing:
        raise ConfigError(f"--certs {certs} must hold {', '.join(missing)}; they are missing")
    return certs


def _server_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment of ``fedai server``, with the coordinator's key directory resolved.

    Raises:
        ConfigError: the config is invalid, or a secure scheme has no key directory.
    """
    from fedai.config import ExperimentConfig

    cfg = ExperimentConfig.load(args.config, args.overrides)
    if args.key_dir:
        section = dataclasses.replace(
            cfg.secure_aggregation, key_dir=str(Path(args.key_dir).resolve())
        )
        cfg = cfg.replace(secure_aggregation=section)
    if cfg.secure_aggregation.scheme != "none":
        key_dir = Path(cfg.secure_aggregation.key_dir or ".")
        if not cfg.secure_aggregation.key_dir or not key_dir.is_dir():
            raise ConfigError(
                f"secure_aggregation.scheme {cfg.secure_aggregation.scheme!r} needs the "
                f"coordinator's key directory (--key-dir); got {str(key_dir)!r}"
            )
        cfg = cfg.replace(
            secure_aggregation=dataclasses.replace(
                cfg.secure_aggregation, key_dir=str(key_dir.resolve())
            )
        )
    return cfg


def _register_keys(args: argparse.Namespace) -> dict[str, Path]:
    """``--register`` public keys by node name (``nodes/NAME/node.pub`` -> NAME).

    Raises:
        ConfigError: a key file does not exist.
    """
    keys = [Path(k) for k in args.register]
    for key in keys:
        if not key.is_file():
            raise ConfigError(f"--register {key}: no such public key file")
    return {k.stem if k.stem != "node" else k.parent.name: k for k in keys}


# ---------------------------------------------------------------------- client
@dataclasses.dataclass(frozen=True, slots=True)
class ClientTls:
    """A node's TLS root certificate and auth key (None when insecure)."""

    root_cert: Path | None
    auth_key: Path | None


def run_client(args: argparse.Namespace) -> int:
    """Execute ``fedai client``."""
    from fedai.federation import deploy
    from fedai.fileio import make_dir
    from fedai.policy import NodePolicy

    cid = args.client_id
    if not _CLIENT_ID.match(cid):
        raise ConfigError(
            f"--client-id must be 1-128 characters of letters, digits and ._@- ; got {cid!r}"
        )
    host, port = deploy.split_address(args.server, what="--server")
    data = Path(args.data).resolve()
    if not data.is_file():
        raise DataError(f"client {cid}: data file {data} does not exist or is not a file")
    state = Path(args.state).resolve()
    make_dir(state, mode=0o700)
    node_config: dict[str, str | int | float | bool] = {
        "data-path": str(data),
        "client-id": cid,
        "state-dir": str(state),
    }
    if args.keys:
        node_config["key-dir"] = str(Path(args.keys).resolve())
    node_config.update(_extra_node_config(args.node_config))
    try:
        NodePolicy.from_node_config(node_config)
    except ConfigError as err:
        raise ConfigError(f"client {cid}: {err}") from err
    tls = _client_tls(args)
    poll = args.poll_interval
    if poll is not None and not 0.01 <= poll <= 60:
        raise ConfigError(f"--poll-interval must be in 0.01..60 seconds; got {poll}")
    quiet = _quiet(args)

    def say(text: str) -> None:
        if not quiet:
            print(f"fedai client {cid}: {text}", flush=True)

    if tls.root_cert is not None:
        wait = args.connect_timeout if args.connect_timeout > 0 else float("inf")
        try:
            deploy.check_tls(host, port, root_cert=tls.root_cert, deadline=time.monotonic() + wait)
        except ConfigError as err:
            raise ConfigError(f"client {cid}: {err}") from err
    config_file = state / "node-config.toml"
    config_file.write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in node_config.items()), encoding="utf-8"
    )
    from fedai.federation.agent import torch_threads

    try:
        threads = torch_threads(node_config)
    except ValueError as err:
        raise ConfigError(f"client {cid}: {err}") from err
    # flwr-clientapp processes (--isolation subprocess) read it; the agent sets torch's own
    env = deploy.flower_env(state / "flwr-home", {"OMP_NUM_THREADS": str(threads)})
    runtime_port = deploy.free_port()
    flower_args = ["--superlink", f"{host}:{port}", "--node-config", str(config_file)]
    flower_args += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    if tls.root_cert is None:
        flower_args.append("--insecure")
    else:
        flower_args += ["--root-certificates", str(tls.root_cert)]
    if tls.auth_key is not None:
        flower_args += ["--auth-supernode-private-key", str(tls.auth_key)]
    secret: bytes | None = None
    if args.isolation == "process":
        secret = _superexec_secret(state / "superexec.secret")
        flower_args += ["--isolation", "process"]
        flower_args += ["--superexec-auth-secret-file", str(state / "superexec.secret")]
    from fedai.federation.agent import DEFAULT_SUPERNODE_POLL_SECONDS

    argv = [sys.executable, "-m", "fedai.federation.agent", "supernode"]
    argv += ["--poll-interval", str(poll or DEFAULT_SUPERNODE_POLL_SECONDS)]
    argv += ["--parent-pid", str(os.getpid()), "--", *flower_args]
    agent: _Agent | None = None
    first_start = time.monotonic()
    with deploy.signals_as_interrupt(), deploy.children() as started:
        try:
            if secret is not None:
                agent = _Agent(cid, runtime_port, secret, node_config, say=say)
                say(f"ClientApp loaded in this process (torch threads {agent.threads})")
            while True:
                node = deploy.start_child(
                    "flower-supernode", argv, env=env, log_path=state / "supernode.log"
                )
                started.append(node)
                say(f"SuperNode PID {node.pid} -> {host}:{port}; log {node.log_path}")
                while node.alive():
                    if agent is not None and not agent.alive():
                        raise FedAIError(f"client {cid}: the ClientApp worker stopped")
                    time.sleep(0.5)
                started.remove(node)
                deploy.stop_child(node)
                refusal, detail = _why_node_exited(node)
                if refusal and time.monotonic() - first_start < args.join_timeout:
                    say(f"refused by the SuperLink: {refusal}; trying again in 5 s")
                    time.sleep(5.0)
                    continue
                flower_code = _FLOWER_EXIT.findall(node.tail(40))
                code = flower_code[-1] if flower_code else str(node.proc.returncode)
                raise FedAIError(
                    f"client {cid}: the SuperNode stopped (exit code {code})"
                    + (f": {refusal}" if refusal else "")
                    + (f" ({detail})" if detail else "")
                    + f"; log {node.log_path}"
                )
        except KeyboardInterrupt:
            say("stopping")
            return EXIT_OK
        finally:
            if agent is not None:
                agent.stop()


class _Agent:
    """The ClientApp worker (:mod:`fedai.federation.agent`) in a thread of this process."""

    def __init__(
        self,
        cid: str,
        runtime_port: int,
        secret: bytes,
        node_config: dict[str, Any],
        *,
        say: Callable[[str], None],
    ) -> None:
        from fedai.federation.agent import ClientAppWorker, load_client_app, set_torch_threads

        try:
            self.threads = set_torch_threads(node_config)
        except ValueError as err:
            raise ConfigError(f"client {cid}: {err}") from err
        self.cid = cid
        self.worker = ClientAppWorker(
            f"127.0.0.1:{runtime_port}",
            client_app=load_client_app(),
            auth_secret=secret,
            on_task=self.report,
        )
        self.say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fedai-clientapp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.worker.serve(self._stop)
        except Exception:  # the main thread sees the thread gone and says so
            logger.exception("client %s: the ClientApp worker failed", self.cid)

    def report(self, task: TaskReport) -> None:
        """One line per task: message, round, status, seconds."""
        shown_round = task.group_id not in ("", "0")
        what = task.message_type + (f" round {task.group_id}" if shown_round else "")
        self.say(
            f"{what}: {task.status} in {task.seconds:.2f} s (pull {task.pull_seconds:.2f} s, "
            f"ClientApp {task.app_seconds:.2f} s, push {task.push_seconds:.2f} s)"
            + (f": {task.details}" if task.details else "")
        )

    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop after the current task (the thread is a daemon: it never blocks exit)."""
        self._stop.set()
        self._thread.join(timeout=10.0)


def _why_node_exited(node: Child) -> tuple[str, str]:
    """(a refusal in an operator's words or "", Flower's own line) from a SuperNode's log."""
    tail = node.tail(40)
    codes = _FLOWER_CODE.findall(tail)
    refusal = next((_REFUSALS[c] for c in reversed(codes) if c in _REFUSALS), "")
    found = _FLOWER_CODE.search(tail)
    detail = found.group(0) if found else (tail.splitlines()[-1] if tail else "")
    return refusal, detail


def _client_tls(args: argparse.Namespace) -> ClientTls:
    from fedai.commands.certs import CA_CERT, NODE_KEY

    if args.insecure:
        if args.certs or args.root_cert or args.auth_key:
            raise ConfigError("--insecure excludes --certs, --root-cert and --auth-key")
        return ClientTls(None, None)
    root = Path(args.root_cert) if args.root_cert else None
    key = Path(args.auth_key) if args.auth_key else None
    if args.certs:
        bundle = Path(args.certs)
        root = root or bundle / CA_CERT
        key = key or bundle / NODE_KEY
    if root is None:
        raise ConfigError("--certs DIR or --root-cert FILE is required unless --insecure")
    problems = [
        f"{what} {p} does not exist"
        for what, p in (("root certificate", root), ("auth key", key))
        if p is not None and not p.is_file()
    ]
    if problems:
        raise ConfigError(problems)
    if key is not None:
        _check_auth_key(key)
    return ClientTls(root.resolve(), None if key is None else key.resolve())


def _check_auth_key(path: Path) -> None:
    """Raise ConfigError unless ``path`` is an OpenSSH ECDSA private key (Flower's rule)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(
            f"auth key {path} must be an unencrypted OpenSSH private key: {err}"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"auth key {path} must be an ECDSA key (fedai certs makes P-384; Flower refuses "
            f"{type(key).__name__.removeprefix('_').replace('PrivateKey', '') or 'this type'})"
        )


def _extra_node_config(items: list[str]) -> dict[str, str | int | float | bool]:
    """``KEY=VALUE`` pairs (values read as TOML, else as text)."""
    import tomllib

    out: dict[str, str | int | float | bool] = {}
    reserved = {"data-path", "client-id", "state-dir", "key-dir"}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ConfigError(f"--node-config expects KEY=VALUE; got {item!r}")
        if key in reserved:
            raise ConfigError(f"--node-config {key} is set by its own option; got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"--node-config {key} must be a number, bool or text; got {raw!r}")
        out[key] = value
    return out


def _superexec_secret(path: Path) -> bytes:
    """The SuperNode <-> agent shared secret (made once, 0600)."""
    from fedai.fileio import atomic_write

    if not path.exists():
        atomic_write(path, secrets.token_hex(32), mode=0o600)
    return path.read_bytes()


__all__ = [
    "judge_results",
    "register",
    "run_certs",
    "run_client",
    "run_server",
    "write_experiment_toml",
]
