"""``fedai simulate``: run an experiment on simulated clients and write its results."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedai.commands import add_config_arguments
from fedai.config import ExperimentConfig
from fedai.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    FedAIError,
)
from fedai.verdict import FAILED_TAIL, ClientErrors, Verdict, failed, judge

logger = logging.getLogger(__name__)

BACKENDS = ("inprocess", "ray")
#: Simulated nodes keep their privacy ledgers here (under --out), so a resumed run continues
#: them as real nodes would (``node_config["state-dir"]``).
CLIENT_STATE_DIR = "client-state"


def register(sub: Any) -> None:
    """Add the ``simulate`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="run a federated experiment on simulated clients",
        description="Run a federated experiment on simulated clients. Prints one line per "
        "round (round, federated test accuracy, loss, seconds) and writes "
        "DIR/results.json, DIR/model.pt + model.json and DIR/accuracy.png. Without "
        "--config it runs the quickstart defaults (digits, 10 clients, Dirichlet 0.5, MLP).",
        epilog="examples:\n  fedai simulate\n  fedai simulate --config experiments/"
        "quickstart.toml --set train.lr=0.1 --set experiment.rounds=5\n"
        "  fedai simulate --backend ray --out runs/ray-check\n\n"
        "Before any client starts, the data, partition, model, keys, privacy budget\n"
        "and --out are checked once.\n\nexit status:\n"
        f"  {EXIT_OK:<4} the run finished every round; at least one of its last "
        f"{FAILED_TAIL} was accepted\n"
        f"  {EXIT_FAILED:<4} the run failed: no round accepted, the last {FAILED_TAIL} rounds "
        "failed,\n       or it stopped early; one line says why, results.json "
        "(outcome) too\n"
        f"  {EXIT_USAGE:<4} bad input found before anything ran: config, data, partition,\n"
        "       keys, privacy budget, --out (nothing is written)\n"
        f"  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, config_help="experiment TOML (see experiments/)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="inprocess",
        help="inprocess (default): no Ray, starts instantly; ray: Flower's "
        "Simulation Engine, one CPU per client",
    )
    p.add_argument(
        "--out", metavar="DIR", help="results directory (default runs/<timestamp>-<name>)"
    )
    p.add_argument(
        "--key-dir",
        metavar="DIR",
        help="key directory for secure aggregation (overrides secure_aggregation.key_dir)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out DIR (its results, tables, plots and "
        f"checkpoint are removed first; the simulated clients' ledgers in DIR/"
        f"{CLIENT_STATE_DIR}/ are kept, so the new run continues their epsilon); without "
        "it such a DIR is refused",
    )
    p.add_argument(
        "--reset-client-ledgers",
        action="store_true",
        help=f"with --overwrite, also remove DIR/{CLIENT_STATE_DIR}/ (the simulated "
        "clients' privacy ledgers), so every client starts again from epsilon 0: the "
        "privacy they spent is forgotten, by the operator's explicit choice",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --out DIR after its last completed round "
        "(same config; every round writes DIR/checkpoint/)",
    )
    # -q/--quiet (no per-round lines) and -v come from fedai.cli.add_common_options.
    ray = p.add_argument_group("--backend ray (Flower's Simulation Engine)")
    ray.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="attach to this running Ray cluster (default: $RAY_ADDRESS, else a private Ray)",
    )
    ray.add_argument(
        "--client-cpus", type=float, default=1.0, metavar="N", help="CPUs per client (default 1)"
    )
    ray.add_argument(
        "--client-gpus",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs per client, fractions allowed (default 0)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on monitoring.metrics_host:PORT during the run "
        "(sets monitoring.metrics_port)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``fedai simulate``."""
    overrides = list(args.overrides or [])
    if getattr(args, "metrics_port", None) is not None:
        overrides.append(f"monitoring.metrics_port={args.metrics_port}")
    cfg = ExperimentConfig.load(args.config, overrides)
    from fedai.monitoring import apply_log_format

    apply_log_format(cfg.monitoring.log_format)
    if args.key_dir:
        from dataclasses import replace

        if cfg.secure_aggregation.scheme == "none":
            from fedai.schemes import key_scheme_names

            raise ConfigError(
                "--key-dir applies only to a secure scheme (secure_aggregation.scheme "
                f"{' or '.join(key_scheme_names())}); got --key-dir {args.key_dir!r} with "
                "scheme 'none'"
            )
        cfg = cfg.replace(secure_aggregation=replace(cfg.secure_aggregation, key_dir=args.key_dir))
    from fedai.results import default_run_dir

    out_dir = Path(args.out) if args.out else _unused_dir(default_run_dir(cfg.experiment.name))
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR, the directory of the run to continue")
    if args.resume and args.backend == "ray" and cfg.privacy.mode != "none":
        raise ConfigError(
            "--resume with --backend ray and privacy on: Ray's simulated clients keep their "
            "ledgers in memory, so they did not survive; resume DP runs with --backend inprocess"
        )
    from fedai import preflight

    overwrite = bool(getattr(args, "overwrite", False))
    if overwrite and args.resume:
        raise ConfigError("--overwrite and --resume exclude each other; got both")
    reset_ledgers = bool(getattr(args, "reset_client_ledgers", False))
    if reset_ledgers and not overwrite:
        raise ConfigError(
            "--reset-client-ledgers applies only with --overwrite (a new run over the one "
            f"in --out); got it {'with --resume' if args.resume else 'alone'}"
        )
    # Once, in the driver, before any client starts: one line and exit 2, nothing written.
    preflight.check_run(cfg, out_dir=out_dir, overwrite=overwrite, resume=bool(args.resume))
    if not args.resume:  # a run to resume is in a directory that exists
        preflight.prepare_output_dir(out_dir, overwrite=overwrite)
    from server.checkpointing import start_or_resume

    resume = start_or_resume(
        out_dir,
        cfg,
        resume=args.resume,
        overwrite=overwrite,
        state_dirs=(CLIENT_STATE_DIR,),
        reset_state=reset_ledgers,
    )
    if resume is not None and not args.quiet:
        print(f"resuming run {resume.run_id} after round {resume.round}", flush=True)
    ray_options = {
        "address": args.ray_address,
        "num_cpus_per_client": args.client_cpus,
        "num_gpus_per_client": args.client_gpus,
    }
    errors = ClientErrors()
    try:
        with _each_warning_once(enabled=not getattr(args, "verbose", 0)):
            outcome = simulate(
                cfg,
                backend=args.backend,
                verbose=not args.quiet,
                ray_options=ray_options,
                out_dir=out_dir,
                resume=resume,
                client_errors=errors,
            )
    except FedAIError as err:  # it started, so it failed: results.json still says why
        cause = errors.summary(num_clients=cfg.experiment.num_clients) or str(err)
        return _report_failure(failed(f"the run ended without a result: {cause}"), cfg, out_dir)
    verdict = judge(
        outcome.summary,
        planned_rounds=cfg.experiment.rounds,
        num_clients=cfg.experiment.num_clients,
        errors=errors,
    )
    outcome.summary.outcome = verdict.to_dict()
    results = save_simulation(outcome, cfg, out_dir)
    if verdict.failed:
        return _report_failure(verdict, cfg, out_dir, results=results)
    if len(errors):  # the run went on without them; say so once
        logger.warning("%s", errors.summary(num_clients=cfg.experiment.num_clients))
    final = outcome.summary.final
    acc = final["accuracy"]
    failed_rounds = final["rounds_failed"]
    parts = [
        f"final accuracy {acc:.4f}" if acc is not None else "final accuracy n/a",
        f"loss {final['loss']:.4f}" if final["loss"] is not None else "",
        f"in {final['seconds']:.1f}s;",
        f"{failed_rounds} of {len(outcome.summary.rounds)} rounds failed;" if failed_rounds else "",
        f"results: {results}",
    ]
    print(" ".join(part for part in parts if part))
    return EXIT_OK


def _report_failure(
    verdict: Verdict, cfg: ExperimentConfig, out_dir: Path, *, results: Path | None = None
) -> int:
    """Print the one failure line; write results.json first if the run left none."""
    if results is None:
        from fedai.results import RunSummary, write_results

        summary = RunSummary(config=cfg.to_dict(), outcome=verdict.to_dict())
        summary.stop_reason = verdict.reason
        results = write_results(out_dir, summary)
    print(f"fedai simulate: failed: {verdict.reason} (results: {results})", file=sys.stderr)
    return verdict.exit_code


def _unused_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... if it exists (default run directories)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


#: Loggers whose warnings repeat per client or per round in a simulation.
_REPEATING_LOGGERS = (
    "clients.app",
    "clients.privacy",
    "server.availability",
    "server.rounds",
    "server.strategy",
    "server.transport",
    "fedai.federation.inprocess",
)


class _OncePerText(logging.Filter):
    """Pass the first warning of each text (numbers ignored: client ids, rounds); count the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, re.sub(r"\d+", "#", record.getMessage()))
        if key in self.seen:
            self.suppressed += 1
            return False
        self.seen.add(key)
        return True


@contextlib.contextmanager
def _each_warning_once(*, enabled: bool) -> Iterator[None]:
    """While simulating, log a warning that every client or round repeats only once.

    ``-v`` (``enabled=False``) shows every copy.
    """
    if not enabled:
        yield
        return
    once = _OncePerText()
    loggers = [logging.getLogger(name) for name in _REPEATING_LOGGERS]
    for lg in loggers:
        lg.addFilter(once)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(once)
        if once.suppressed:
            logger.warning(
                "%d warning(s) like the ones above not repeated (-v shows every one)",
                once.suppressed,
            )


def simulate(
    cfg: ExperimentConfig,
    *,
    backend: str = "inprocess",
    verbose: bool = True,
    tap: Any = None,
    ray_options: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    resume: Any = None,
    client_errors: ClientErrors | None = None,
) -> Any:
    """Run ``cfg`` on the chosen backend and return the coordinator's RunOutcome.

    ``ray_options`` (``--backend ray``): keyword arguments of
    :func:`fedai.federation.ray_backend.run_ray` (address, per-client CPUs and GPUs).
    ``out_dir``: checkpoint into it after every round, and (in-process) keep the
    simulated clients' ledgers under it; ``resume``: a checkpoint to continue
    (:func:`server.checkpointing.start_or_resume`). ``client_errors`` (in-process only)
    collects the simulated clients' own errors instead of logging them once per client.
    """
    from clients.app import app as client_app
    from server.app import build_server_app, format_progress

    outcomes: list[Any] = []

    def progress(record: Any, total: int) -> None:
        if verbose:
            print(format_progress(record, total), flush=True)

    server_app = build_server_app(
        cfg, on_round=progress, sink=outcomes.append, checkpoint_dir=out_dir, resume=resume
    )
    n = cfg.experiment.num_clients
    if backend == "inprocess":
        from fedai.federation.inprocess import run_inprocess

        nodes: list[dict[str, bool | int | float | str]] | None = None
        if out_dir is not None:
            state = str(out_dir / CLIENT_STATE_DIR)
            nodes = [{"partition-id": i, "num-partitions": n, "state-dir": state} for i in range(n)]
        import clients.app as client_module

        previous = client_module.error_sink
        if client_errors is not None:
            client_module.error_sink = client_errors.add
        try:
            run_inprocess(server_app, client_app, num_supernodes=n, tap=tap, node_configs=nodes)
        finally:
            client_module.error_sink = previous
    elif backend == "ray":
        from fedai.federation.ray_backend import run_ray

        run_ray(server_app, client_app, num_supernodes=n, **(ray_options or {}))
    else:
        raise FedAIError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not outcomes:
        raise FedAIError(f"the {backend} run ended without a result (see the log above)")
    return outcomes[0]


def save_simulation(outcome: Any, cfg: ExperimentConfig, out_dir: Path) -> Path:
    """Write results; under a secure scheme the operator's client bundle decrypts the model.

    The model is decoded from the saved final aggregate by
    :func:`fedai.checkpoint.write_model`, as ``fedai model decrypt`` does.
    """
    from server.app import save_outcome

    path = save_outcome(outcome, out_dir)
    if cfg.secure_aggregation.scheme != "none" and outcome.payload is not None:
        from fedai.checkpoint import write_model

        write_model(out_dir, key_dir=cfg.secure_aggregation.key_dir)
    return path


def main() -> None:  # pragma: no cover - convenience for python -m
    """Run as a module."""
    from fedai.cli import main as cli_main

    sys.exit(cli_main(["simulate", *sys.argv[1:]]))


__all__ = ["register", "run", "save_simulation", "simulate"]

if __name__ == "__main__":  # pragma: no cover
    main()
