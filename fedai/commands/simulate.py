"""``fedai simulate``: run an experiment on simulated clients and write its results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedai.commands import add_config_arguments
from fedai.config import ExperimentConfig
from fedai.errors import FedAIError

BACKENDS = ("inprocess", "ray")


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
        "  fedai simulate --backend ray --out runs/ray-check",
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
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``fedai simulate``."""
    cfg = ExperimentConfig.load(args.config, args.overrides)
    if args.key_dir:
        from dataclasses import replace

        cfg = cfg.replace(secure_aggregation=replace(cfg.secure_aggregation, key_dir=args.key_dir))
    from fedai.results import default_run_dir

    out_dir = Path(args.out) if args.out else default_run_dir(cfg.experiment.name)
    outcome = simulate(cfg, backend=args.backend, verbose=not args.quiet)
    results = save_simulation(outcome, cfg, out_dir)
    final = outcome.summary.final
    if outcome.summary.stop_reason:
        print(f"stopped early: {outcome.summary.stop_reason}")
    acc = final["accuracy"]
    print(
        f"final accuracy {acc:.4f}" if acc is not None else "final accuracy n/a",
        f"loss {final['loss']:.4f}" if final["loss"] is not None else "",
        f"in {final['seconds']:.1f}s; results: {results}",
    )
    return 0


def simulate(
    cfg: ExperimentConfig, *, backend: str = "inprocess", verbose: bool = True, tap: Any = None
) -> Any:
    """Run ``cfg`` on the chosen backend and return the coordinator's RunOutcome."""
    from clients.app import app as client_app
    from server.app import build_server_app, format_progress

    outcomes: list[Any] = []

    def progress(record: Any, total: int) -> None:
        if verbose:
            print(format_progress(record, total), flush=True)

    server_app = build_server_app(cfg, on_round=progress, sink=outcomes.append)
    n = cfg.experiment.num_clients
    if backend == "inprocess":
        from fedai.federation.inprocess import run_inprocess

        run_inprocess(server_app, client_app, num_supernodes=n, tap=tap)
    elif backend == "ray":
        from fedai.federation.ray_backend import run_ray

        run_ray(server_app, client_app, num_supernodes=n)
    else:
        raise FedAIError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if not outcomes:
        raise FedAIError(f"the {backend} run ended without a result (see the log above)")
    return outcomes[0]


def save_simulation(outcome: Any, cfg: ExperimentConfig, out_dir: Path) -> Path:
    """Write results; under a secure scheme the operator's client bundle decrypts the model."""
    from server.app import save_outcome

    path = save_outcome(outcome, out_dir)
    if cfg.secure_aggregation.scheme != "none" and outcome.payload is not None:
        from fedai.models import build_model, save_model, set_weights
        from fedai.schemes import client_codec

        model = build_model(outcome.spec)
        shapes = [tuple(v.shape) for v in model.state_dict().values()]
        codec = client_codec(cfg.secure_aggregation)
        set_weights(model, codec.decode(outcome.payload, outcome.total_weight, shapes))
        save_model(out_dir, model, outcome.spec)
    return path


def main() -> None:  # pragma: no cover - convenience for python -m
    """Run as a module."""
    from fedai.cli import main as cli_main

    sys.exit(cli_main(["simulate", *sys.argv[1:]]))


__all__ = ["register", "run", "save_simulation", "simulate"]

if __name__ == "__main__":  # pragma: no cover
    main()
