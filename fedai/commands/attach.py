"""``fedai server --superlink HOST:PORT``: a run on a SuperLink an organisation already runs.

The start path (:func:`fedai.commands.deploy.run_server`) starts ``flower-superlink``
itself; attached, fedai starts nothing but ``flwr run`` (and ``flwr`` CLI calls):

1. options that only concern a SuperLink fedai starts (``--address``, ``--state``) are
   refused, naming both options;
2. the SuperLink must answer at ``HOST:PORT`` within a few seconds, and with TLS present
   a certificate the root certificate (``--root-cert``, else ``ca.crt`` in ``--certs``)
   verifies (:func:`fedai.federation.deploy.check_superlink`); otherwise exit 2 with one
   line naming the address;
3. node keys are registered only when given with ``--register`` (the SuperLink's operator
   registers them otherwise);
4. the run is submitted with the same Flower App and followed the same way (log lines,
   ``flwr ls`` status, results.json verdict); the same command with the same ``--out``
   resumes a run whose coordinator died (the ServerApp continues its checkpoint);
5. interrupted (Ctrl-C, SIGTERM), it stops its ``flwr run`` only, never the SuperLink,
   and prints the ``flwr stop`` command for the run, which may still be live there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedai.commands.deploy import (
    _app_dir,
    _quiet,
    _register_keys,
    _server_config,
    _server_outcome,
    _verbose,
)
from fedai.errors import EXIT_INTERRUPTED, ConfigError, FedAIError

if TYPE_CHECKING:
    from fedai.config import ExperimentConfig

ATTACH_CHECK_SECONDS = 5.0  # an attached SuperLink is already up: refusals retried this long
#: ``fedai server`` options that only concern a SuperLink it starts (refused with --superlink).
_START_ONLY = {
    "address": ("--address", "where a SuperLink fedai server starts listens"),
    "state": ("--state", "that SuperLink's database, Flower home and logs"),
}


def run_attached(args: argparse.Namespace) -> int:
    """``fedai server --superlink HOST:PORT``: run the experiment on a running SuperLink.

    Nothing is started but ``flwr run`` (and ``flwr`` CLI calls); the SuperLink is
    someone else's and is never stopped. Interrupted (Ctrl-C, SIGTERM), this stops its
    ``flwr run`` only and prints the ``flwr stop`` command for the run, which the
    SuperLink may still be running. The Flower CLI's home (its ``config.toml`` naming
    the SuperLink) is a temporary directory, removed when the command ends unless the
    run may still be live. The experiment goes as run-config values (:func:`write_run_config`),
    not as a file path, so the ServerApp beside that SuperLink needs no file from here;
    ``--out`` (and ``--key-dir`` under HE) are paths the ServerApp writes (reads) there.
    """
    import shutil
    import tempfile

    from fedai.federation import deploy
    from fedai.results import default_run_dir

    _refuse_start_options(args)
    host, port = deploy.split_address(args.superlink, what="--superlink")
    root_cert = _attached_root_cert(args)
    deploy.check_superlink(host, port, root_cert=root_cert, timeout=ATTACH_CHECK_SECONDS)
    cfg = _server_config(args)
    app_dir = _app_dir(args.app)
    node_keys = _register_keys(args)
    out = (Path(args.out) if args.out else default_run_dir(cfg.experiment.name)).resolve()
    quiet, verbose = _quiet(args), _verbose(args)

    def say(text: str) -> None:
        if not quiet:
            print(f"fedai server: {text}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="fedai-server-"))
    keep_work = False
    try:
        home = work / "flwr-home"
        run_config = write_run_config(cfg, out, app_dir=app_dir, path=work / "run-config.toml")
        deploy.write_cli_config(home, address=f"{host}:{port}", root_cert=root_cert)
        env = deploy.flower_env(home)
        flwr_cmd = f"FLWR_HOME={home} {deploy.flower_bin('flwr')}"
        tls = "--insecure: no TLS" if root_cert is None else f"TLS verified with {root_cert}"
        say(
            f"attached to the SuperLink at {host}:{port} ({tls}); fedai server did not "
            "start it and does not stop it"
        )
        if root_cert is None:
            print("fedai server: --insecure: no TLS", file=sys.stderr)
        seen: list[str] = []
        run_ids: list[int] = []
        with deploy.signals_as_interrupt():
            try:
                for name, key in node_keys.items():
                    say(f"node {name}: {deploy.register_node(key, name, env=env)}")
                if not node_keys:
                    say("node keys: not registered here (the SuperLink's operator does that)")
                say(
                    f"run {cfg.experiment.name}: {cfg.experiment.rounds} rounds, results in "
                    f"{out} (written by the ServerApp beside the SuperLink)"
                )

                def show(line: str) -> None:
                    found = deploy.RUN_STARTED.search(line)
                    if found and not run_ids:
                        run_ids.append(int(found.group(1)))
                    seen.append(line)
                    del seen[:-20]
                    if not quiet and deploy.keep_line(line, verbose=verbose):
                        print(line, flush=True)

                submitted = time.time()
                run_id, code = deploy.submit_run(app_dir, run_config, env=env, on_line=show)
                if run_id is None:
                    tail = "\n".join(seen[-10:])
                    raise FedAIError(
                        f"flwr run did not start a run on the SuperLink at {host}:{port} "
                        f"(exit code {code}); its output ends with:\n{tail}"
                    )
                status = deploy.wait_for_status(run_id, env=env, timeout=60.0)
                if not status.startswith("finished"):  # the stream ended, the run did not
                    keep_work = True
                    print(
                        f"fedai server: flwr run's stream ended but run {run_id} is "
                        f"{status or 'in an unknown state'} on the SuperLink at {host}:{port}; "
                        f"follow it with {flwr_cmd} log {run_id} {deploy.FEDERATION}, stop it "
                        f"with {flwr_cmd} stop {run_id} {deploy.FEDERATION} (then delete {work})",
                        file=sys.stderr,
                    )
            except KeyboardInterrupt:
                keep_work = bool(run_ids)
                print(
                    "fedai server: interrupted; stopped flwr run only. The SuperLink at "
                    f"{host}:{port} was not started by fedai server and keeps running"
                    + (
                        f"; run {run_ids[0]} may still be live on it. Stop it with: "
                        f"{flwr_cmd} stop {run_ids[0]} {deploy.FEDERATION} (then delete {work})"
                        if run_ids
                        else "; no run was started"
                    ),
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return _server_outcome(run_id, status, out, cfg, since=submitted)


def _refuse_start_options(args: argparse.Namespace) -> None:
    """Raise ConfigError naming every option that only concerns a SuperLink fedai starts."""
    given = [(flag, what) for dest, (flag, what) in _START_ONLY.items() if getattr(args, dest)]
    if given:
        raise ConfigError(
            [
                f"--superlink and {flag} exclude each other ({flag}: {what}; with "
                "--superlink fedai server starts no SuperLink)"
                for flag, what in given
            ]
        )


def _attached_root_cert(args: argparse.Namespace) -> Path | None:
    """The CA certificate that verifies an attached SuperLink (None with --insecure).

    ``--root-cert FILE``, else ``ca.crt`` in ``--certs DIR`` (as the start path and
    ``fedai client`` find it).

    Raises:
        ConfigError: neither given (nor --insecure), both --insecure and a certificate,
            or the file does not exist.
    """
    from fedai.commands.certs import CA_CERT

    if args.insecure:
        if args.certs or args.root_cert:
            raise ConfigError("--insecure excludes --certs and --root-cert")
        return None
    if args.root_cert:
        root = Path(args.root_cert)
    elif args.certs:
        root = Path(args.certs) / CA_CERT
    else:
        raise ConfigError(
            "--superlink needs the CA certificate that verifies the SuperLink: --root-cert "
            "FILE or --certs DIR (its ca.crt); or --insecure for a SuperLink without TLS"
        )
    if not root.is_file():
        raise ConfigError(f"root certificate {root} does not exist")
    return root.resolve()


def write_run_config(cfg: ExperimentConfig, out: Path, *, app_dir: Path, path: Path) -> Path:
    """Write ``cfg`` and the output directory as a ``flwr run --run-config`` TOML file.

    Every experiment key is written (an unset one as ``""``, the ServerApp's "unset"), so
    Flower's fusion with the app's ``[tool.flwr.app.config]`` defaults changes nothing;
    no ``config-file`` (a path on this machine the ServerApp may not see). The file is
    checked the way the ServerApp reads it (:func:`server.app.config_from_run_config`):
    every key must be one of the app's, and the fused values must give ``cfg`` back.

    Raises:
        ConfigError: a key the app does not declare, or the values do not read back.
    """
    import tomllib

    from fedai.config import ExperimentConfig
    from fedai.fileio import atomic_write

    try:
        app = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
        defaults = dict(app["tool"]["flwr"]["app"]["config"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{app_dir}/pyproject.toml must declare [tool.flwr.app.config]: {err}"
        ) from err
    sections: dict[str, dict[str, Any]] = {
        section: {key: "" if value is None else value for key, value in values.items()}
        for section, values in {**cfg.to_dict(), "output": {"dir": str(out)}}.items()
    }
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    sent = {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()}
    unknown = sorted(k for k in sent if k not in defaults)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if unknown[5:] else "")
        raise ConfigError(
            f"the Flower App in {app_dir} does not declare run-config key(s) {shown} in "
            "[tool.flwr.app.config]"
        )
    unset = {
        f"{section}.{key}"
        for section, values in ExperimentConfig().to_dict().items()
        for key, value in values.items()
        if value is None
    }
    fused = {**defaults, **sent}
    fused.pop("config-file", None)
    fused.pop("output.dir", None)
    back = ExperimentConfig.from_flat(
        {k: v for k, v in fused.items() if not (v == "" and k in unset)}
    )
    if back != cfg:
        raise ConfigError(f"the experiment does not read back from run-config values ({path})")
    atomic_write(path, "\n".join(lines), mode=0o600)
    if tomllib.loads(path.read_text(encoding="utf-8")) != sections:
        raise ConfigError(f"{path} does not read back as the values written")
    return path


def _toml_value(value: Any) -> str:
    """A TOML literal for a run-config value (bool, int, float or text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(value)
    raise ConfigError(f"run-config values must be bool, int, finite float or text; got {value!r}")


__all__ = ["ATTACH_CHECK_SECONDS", "run_attached", "write_run_config"]
