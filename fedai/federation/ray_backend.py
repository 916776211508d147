"""Flower's Simulation Engine (Ray) as a fedai backend, on a private Ray or a Ray cluster.

``run_simulation`` hands the ServerApp an empty ``run_config`` (it does not read
pyproject.toml), so the CLI passes a ServerApp already bound to the experiment config;
the ClientApp gets the config from the coordinator's messages.

Where the clients run:

* No address (and no ``RAY_ADDRESS`` in the environment): a private Ray on this machine
  with ``os.cpu_count()`` CPUs, started for the run and shut down after it.
* ``address`` (``--ray-address HOST:PORT``, or Ray's own ``RAY_ADDRESS``): the run
  attaches to that running cluster (``ray start --head`` on one machine, ``ray start
  --address HEAD:PORT`` on the others) and disconnects afterwards; the cluster keeps
  running. Every node of the cluster needs the same Python environment with fedai
  installed: Ray ships the driver's ``PYTHONPATH`` to the workers, not the packages.

Each simulated client is a Ray actor reserving ``num_cpus_per_client`` CPUs and
``num_gpus_per_client`` GPUs (fractions allowed): Flower runs as many actors at once as
fit on each node, so these numbers set the parallelism. A GPU reservation only places
actors (fedai's training loop runs on the CPU today).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedai import progress
from fedai.errors import ConfigError

logger = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "RAY_ADDRESS"


def resolve_address(address: str | None) -> str | None:
    """The Ray cluster to attach to: ``address``, else ``$RAY_ADDRESS``, else None (private)."""
    if address:
        return address
    return os.environ.get(RAY_ADDRESS_ENV) or None


def backend_config(
    *,
    address: str | None,
    num_cpus_per_client: float,
    num_gpus_per_client: float,
    verbose: bool,
) -> dict[str, Any]:
    """The ``backend_config`` handed to Flower's ``run_simulation``.

    Raises:
        ConfigError: A per-client resource is out of range, or asks a private Ray for
            more CPUs than this machine has.
    """
    problems = []
    if not (math.isfinite(num_cpus_per_client) and num_cpus_per_client > 0):
        problems.append(f"--client-cpus must be > 0; got {num_cpus_per_client!r}")
    if not (math.isfinite(num_gpus_per_client) and num_gpus_per_client >= 0):
        problems.append(f"--client-gpus must be >= 0; got {num_gpus_per_client!r}")
    cpus = os.cpu_count() or 1
    if address is None and not problems and num_cpus_per_client > cpus:
        problems.append(
            f"--client-cpus must fit on this machine's private Ray ({cpus} CPUs); got "
            f"{num_cpus_per_client:g} (attach to a cluster with --ray-address)"
        )
    if problems:
        raise ConfigError(problems)
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose}
    if address is None:
        init_args["num_cpus"] = cpus
    else:  # Ray refuses num_cpus/num_gpus when connecting to an existing cluster
        init_args["address"] = address
    return {
        "client_resources": {
            "num_cpus": float(num_cpus_per_client),
            "num_gpus": float(num_gpus_per_client),
        },
        "init_args": init_args,
    }


def run_ray(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    num_supernodes: int,
    num_cpus_per_client: float = 1.0,
    num_gpus_per_client: float = 0.0,
    address: str | None = None,
    verbose: bool = False,
) -> float:
    """Run the apps under Flower's Ray Simulation Engine; return wall seconds.

    Args:
        server_app: The coordinator, bound to the experiment config.
        client_app: fedai's ClientApp.
        num_supernodes: Simulated clients.
        num_cpus_per_client: CPUs each client actor reserves.
        num_gpus_per_client: GPUs (or a fraction of one) each client actor reserves.
        address: A running Ray cluster (``HOST:PORT``, ``auto``, ``ray://...``); None
            uses ``$RAY_ADDRESS`` if set, else a private Ray.
        verbose: Flower's and Ray's own logs.

    Raises:
        ConfigError: Bad per-client resources, or resources no node of the cluster has.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    target = resolve_address(address)
    config = backend_config(
        address=target,
        num_cpus_per_client=num_cpus_per_client,
        num_gpus_per_client=num_gpus_per_client,
        verbose=verbose,
    )
    import ray
    from flwr.simulation import run_simulation

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if ray.is_initialized():  # Flower would silently reuse an earlier connection
        ray.shutdown()
    where = f"attaching to the Ray cluster at {target}" if target else "starting a private Ray"
    progress.report(
        f"{where} for {num_supernodes} clients ({num_cpus_per_client:g} CPU / "
        f"{num_gpus_per_client:g} GPU each); round 1 waits for it (15-25 s on 2 cores)"
    )
    t0 = time.perf_counter()
    try:
        # Ray is started here rather than by Flower (which skips ray.init once Ray is up)
        # so that resources no node has are refused before the run: Flower would log an
        # empty actor pool and leave the coordinator waiting for replies that never come.
        _init_ray(config["init_args"], verbose=verbose)
        _check_capacity(config["client_resources"], target)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=config,
            verbose_logging=verbose,
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()  # a private Ray stops; an attached cluster keeps running
    return time.perf_counter() - t0


def _init_ray(init_args: dict[str, Any], *, verbose: bool) -> None:
    """``ray.init`` as Flower's RayBackend calls it (workers get the driver's sys.path)."""
    import sys

    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    args = dict(init_args)
    if not verbose:
        args.setdefault("logging_level", logging.WARNING)
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)


def _check_capacity(client_resources: dict[str, float], address: str | None) -> None:
    """Raise a ConfigError naming the resources if no client actor fits on any node.

    Raises:
        ConfigError: Not one client's CPUs and GPUs fit on any node of the cluster.
    """
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    try:
        pool_size_from_resources(dict(client_resources))
    except ValueError as err:
        total = ray.cluster_resources()  # type: ignore[no-untyped-call]
        where = f"the Ray cluster at {address}" if address else "the private Ray"
        raise ConfigError(
            f"client resources {client_resources['num_cpus']:g} CPU / "
            f"{client_resources['num_gpus']:g} GPU fit on no node of {where} (it has "
            f"{total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU in all); lower "
            "--client-cpus / --client-gpus"
        ) from err


__all__ = ["RAY_ADDRESS_ENV", "backend_config", "resolve_address", "run_ray"]
