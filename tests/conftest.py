"""Shared test settings: Flower offline, few torch threads."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import logging
from collections.abc import Iterator

import pytest

_PACKAGE_LOGGERS = ("fedai", "server", "clients", "flwr")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what an entry point called in a test (``fedai.cli.main`` configures logging)
    did to fedai's loggers, so a later test's ``caplog`` sees the records it expects."""
    root = logging.getLogger()
    saved = [(root, root.level, list(root.handlers), root.propagate)]
    for name in _PACKAGE_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, list(lg.handlers), lg.propagate))
    yield
    for lg, level, handlers, propagate in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
