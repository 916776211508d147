"""Federated strategies as server optimisers (Flower-free: clients run them under HE).

See :mod:`fedai.strategies.base` for the design and :mod:`fedai.strategies.registry` for
how to add one.
"""

from fedai.strategies.base import (
    FedAvg,
    ServerHyperparameters,
    ServerOptimizer,
    fingerprint,
    snap,
)
from fedai.strategies.registry import (
    REGISTRY,
    build_optimizer,
    hyperparameters_of,
    strategy_names,
)

__all__ = [
    "REGISTRY",
    "FedAvg",
    "ServerHyperparameters",
    "ServerOptimizer",
    "build_optimizer",
    "fingerprint",
    "hyperparameters_of",
    "snap",
    "strategy_names",
]
