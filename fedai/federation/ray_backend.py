"""Flower's Simulation Engine (Ray) as a fedai backend.

``run_simulation`` hands the ServerApp an empty ``run_config`` (it does not read
pyproject.toml), so the CLI passes a ServerApp already bound to the experiment config;
the ClientApp gets the config from the coordinator's messages. Each simulated client
gets one CPU.
"""

from __future__ import annotations

import os
import time

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def run_ray(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_supernodes: int,
    num_cpus_per_client: float = 1.0,
    verbose: bool = False,
) -> float:
    """Run the apps under Flower's Ray Simulation Engine; return wall seconds."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import logging

    from flwr.simulation import run_simulation

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    backend_config = {
        "client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "log_to_driver": verbose,
        },
    }
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_supernodes,
        backend_config=backend_config,  # type: ignore[arg-type]
        verbose_logging=verbose,
    )
    return time.perf_counter() - t0


__all__ = ["run_ray"]
