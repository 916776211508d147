"""Strategy registry: name -> the module and class of its :class:`ServerOptimizer`.

Adding a linear-aggregation strategy: one module under ``fedai/strategies/`` and one line
here. ``[strategy] name`` accepts exactly these keys. Modules are imported on use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedai.errors import ConfigError
from fedai.strategies.base import ServerHyperparameters, ServerOptimizer

if TYPE_CHECKING:
    from fedai.config import StrategySection

#: Strategy name -> "module:Class".
REGISTRY: dict[str, str] = {
    "fedavg": "fedai.strategies.base:FedAvg",
    "fedprox": "fedai.strategies.fedprox:FedProx",
    "fedavgm": "fedai.strategies.fedavgm:FedAvgM",
    "fedadam": "fedai.strategies.fedopt:FedAdam",
    "fedyogi": "fedai.strategies.fedopt:FedYogi",
    "fedadagrad": "fedai.strategies.fedopt:FedAdagrad",
}


def strategy_names() -> tuple[str, ...]:
    """The registered strategy names, in registry order."""
    return tuple(REGISTRY)


def optimizer_class(name: str) -> type[ServerOptimizer]:
    """The :class:`ServerOptimizer` class registered as ``name``.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    if name not in REGISTRY:
        raise ConfigError(f"strategy.name must be one of {', '.join(REGISTRY)}; got {name!r}")
    module, _, cls = REGISTRY[name].partition(":")
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, ServerOptimizer)):
        raise ConfigError(f"strategy {name!r} must name a ServerOptimizer; got {found!r}")
    return found


def hyperparameters_of(section: StrategySection) -> ServerHyperparameters:
    """The server optimiser's settings from a ``[strategy]`` section."""
    return ServerHyperparameters(
        server_lr=section.effective_server_lr,
        server_momentum=section.server_momentum,
        beta1=section.beta1,
        beta2=section.beta2,
        tau=section.tau,
    )


def build_optimizer(name: str, params: ServerHyperparameters) -> ServerOptimizer:
    """Instantiate the strategy ``name`` with ``params``."""
    return optimizer_class(name)(params)


__all__ = ["REGISTRY", "build_optimizer", "hyperparameters_of", "optimizer_class", "strategy_names"]
