"""fedai: privacy-preserving federated learning on Flower, Opacus and TenSEAL.

The facade names the pieces most users need; each is imported on first use so that
``import fedai`` (and ``fedai --help``) stays fast and does not pull in torch or TenSEAL.

Example:
    >>> from fedai import ExperimentConfig
    >>> ExperimentConfig().experiment.num_clients
    10
"""

from __future__ import annotations

import importlib
from typing import Any

_DISTRIBUTION = "fedai"

_EXPORTS: dict[str, str] = {
    "ClientCodec": "fedai.aggregation",
    "ClientData": "fedai.data",
    "ConfigError": "fedai.errors",
    "CorruptPayloadError": "fedai.errors",
    "ExperimentConfig": "fedai.config",
    "FedAIError": "fedai.errors",
    "KeyMismatchError": "fedai.errors",
    "ModelSpec": "fedai.models",
    "PlainCodec": "fedai.aggregation",
    "PlainSum": "fedai.aggregation",
    "PrivacyBudgetExceededError": "fedai.errors",
    "PrivacyLedger": "fedai.privacy.ledger",
    "SecureSum": "fedai.aggregation",
    "build_model": "fedai.models",
    "client_codec": "fedai.schemes",
    "coordinator_sum": "fedai.schemes",
    "load_federated": "fedai.data",
    "load_model": "fedai.models",
    "privacy_statement": "fedai.privacy.statement",
    "save_model": "fedai.models",
    "user_level_epsilon": "fedai.privacy.user_level",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def _package_version() -> str:
    """The installed distribution's version (package metadata, so it cannot drift)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a facade name (or read ``__version__``) on first use."""
    if name == "__version__":
        value: Any = _package_version()
        globals()[name] = value
        return value
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedai' has no attribute {name!r}")
