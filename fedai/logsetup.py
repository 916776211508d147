"""Logging set-up for fedai's entry points: the ``fedai`` command and the ServerApp.

Library modules only create loggers (``logging.getLogger(__name__)``); these functions are
what entry points call instead of ``logging.basicConfig``. fedai's own loggers (``fedai``,
``server``, ``clients``) get one handler on stderr and the root logger none, so other
libraries' INFO and DEBUG records go nowhere; third-party loggers stay at WARNING
(httpx logs every HTTP request at INFO, matplotlib its font search at DEBUG) unless asked
for with ``-vv``. gRPC's C core logs through its own channel, set by ``GRPC_VERBOSITY``
before grpc is first imported. Python warnings (Opacus' UserWarnings, ...) become
records of the ``py.warnings`` logger, one line each and each distinct one once, so
``-q`` silences them like any other warning.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import TextIO

__all__ = [
    "FEDAI_LOGGERS",
    "THIRD_PARTY_LOGGERS",
    "WARNINGS_LOGGER",
    "configure_app_logging",
    "configure_logging",
    "quiet_native_logs",
]

FEDAI_LOGGERS = ("fedai", "server", "clients")
"""Loggers of fedai's packages: the library, the ServerApp and the ClientApp."""

THIRD_PARTY_LOGGERS = (
    "PIL",
    "absl",
    "asyncio",
    "filelock",
    "flwr",
    "fsspec",
    "grpc",
    "httpcore",
    "httpx",
    "matplotlib",
    "opacus",
    "ray",
    "urllib3",
)
"""Chatty third-party loggers kept at WARNING unless ``-vv``."""

WARNINGS_LOGGER = "py.warnings"
"""The logger Python warnings go to (the name ``logging.captureWarnings`` uses)."""

FORMAT = "%(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "fedai-stderr"


def _block_basic_config(root: logging.Logger) -> None:
    """Give the root logger a do-nothing handler if it has none.

    ``logging.basicConfig`` does nothing when the root logger has a handler, and some
    libraries call it at import (``opacus.utils.module_utils`` does): without this, the
    handler it adds would print every fedai record a second time.
    """
    if not root.handlers:
        root.addHandler(logging.NullHandler())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (Flower swaps and mirrors it)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._fixed = stream is not None
        self.set_name(_HANDLER_NAME)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fixed:
            self.stream = sys.stderr
        super().emit(record)


def _install(logger: logging.Logger, handler: logging.Handler | None) -> None:
    """Put ``handler`` (or none) on ``logger`` in place of an earlier fedai handler."""
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    if handler is not None:
        logger.addHandler(handler)


def _short_path(filename: str) -> str:
    """``.../site-packages/opacus/x.py`` -> ``opacus/x.py``: relative to its sys.path entry."""
    roots = [p for p in sys.path if p and filename.startswith(os.path.join(p, ""))]
    return os.path.relpath(filename, max(roots, key=len)) if roots else filename


class _WarningsToLog:
    """A ``warnings.showwarning``: each distinct warning once, as one ``py.warnings`` line.

    Once per process, not per code location: code that wraps a call in
    ``warnings.catch_warnings()`` (fedai's accounting does, around Opacus) resets Python's
    own once-per-location registry, so Opacus' "Optimal order is the smallest alpha"
    would otherwise print on every epsilon computed.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[type[Warning], str]] = set()

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = " ".join(str(message).split())
        if (category, text) in self._seen:
            return
        self._seen.add((category, text))
        logging.getLogger(WARNINGS_LOGGER).warning(
            "%s: %s (%s:%d)", category.__name__, text, _short_path(filename), lineno
        )


def quiet_native_logs(verbosity: int = 0) -> None:
    """Keep gRPC's C core and Flower's console quiet unless the user asked for more.

    Environment variables the user set win. Must run before grpc / flwr are imported:
    both read their variable once, at import.

    Args:
        verbosity: 0 or 1 quiets gRPC's C core (``GRPC_VERBOSITY=NONE``: a bind failure
            is reported by fedai, once, not also as an ``E1201 add_port.cc`` line) and,
            below 2, Flower's INFO console lines (``FLWR_LOG_LEVEL=WARNING``).
    """
    if verbosity < 1:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    if verbosity < 2:
        os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")


def configure_logging(
    verbosity: int = 0, *, quiet: bool = False, stream: TextIO | None = None
) -> None:
    """Set up logging for the ``fedai`` command.

    Args:
        verbosity: 0 (default): fedai warnings and errors; 1 (``-v``): fedai at DEBUG,
            third-party loggers still at WARNING; 2 or more (``-vv``): every logger at DEBUG.
        quiet: ``-q``: fedai errors only (Python warnings are warnings: not shown).
        stream: where log lines go; default ``sys.stderr`` at the time of writing.

    Python warnings go to the ``py.warnings`` logger from here on (see
    :class:`_WarningsToLog`), at the level of fedai's own loggers.
    """
    if quiet:
        level = logging.ERROR
    elif verbosity >= 1:
        level = logging.DEBUG
    else:
        level = logging.WARNING
    handler = _StderrHandler(stream)
    root = logging.getLogger()
    everything = verbosity >= 2
    for name in (*FEDAI_LOGGERS, WARNINGS_LOGGER):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        # With -vv the root handler prints fedai's records too; one copy is enough.
        _install(logger, None if everything else handler)
    warnings.showwarning = _WarningsToLog()
    if everything:
        root.setLevel(logging.DEBUG)
        _install(root, handler)
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        # Flower prints through its own console handler as well.
        logging.getLogger("flwr").propagate = False
    else:
        root.setLevel(logging.WARNING)
        _install(root, None)
        _block_basic_config(root)
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def configure_app_logging(level: int = logging.INFO) -> None:
    """Set up logging inside the ServerApp / ClientApp process (``flwr run``).

    fedai's loggers print at ``level`` through their own handler (under ``flwr run
    --stream`` Flower mirrors stderr to the user); the root logger is left alone, so
    httpx's per-request INFO lines (``POST .../push-logs``) stay off. If the root logger
    already has a handler (an entry point configured it), fedai's records go there
    instead of being printed twice.
    """
    root = logging.getLogger()
    printing = [h for h in root.handlers if not isinstance(h, logging.NullHandler)]
    handler = None if printing else _StderrHandler()
    _block_basic_config(root)
    for name in FEDAI_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        _install(logger, handler)
    for name in THIRD_PARTY_LOGGERS:
        if name != "flwr":  # Flower's own console output is what `flwr run` shows
            logging.getLogger(name).setLevel(logging.WARNING)
