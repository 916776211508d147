"""Operator monitoring: a Prometheus endpoint for the coordinator and JSON log lines.

:class:`RunMetrics` holds the coordinator's metrics in a private registry (one per run,
so several runs in one process never share counters). The round loop feeds it once per
round (:meth:`RunMetrics.observe_round`); :func:`serve_metrics` exposes it over HTTP on
``[monitoring] metrics_host:metrics_port`` (127.0.0.1 by default; port 0 = off) for the
run's lifetime. The metric names (all prefixed ``fedai_``):

=====================================  =========  =================================================
``fedai_rounds_completed_total``       counter    rounds finished, by ``status`` (ok/failed/skipped)
``fedai_round``                        gauge      number of the last finished round
``fedai_rounds_planned``               gauge      ``experiment.rounds``
``fedai_round_clients``                gauge      last round's clients, by ``stage``
                                                  (sampled/trained/failed/refused)
``fedai_client_rounds_total``          counter    client-rounds, by ``stage`` (sampled/trained)
``fedai_client_failures_total``        counter    failed client-rounds, by ``reason`` (a class
                                                  from :data:`REASON_CLASSES`, never free text)
``fedai_round_seconds``                histogram  wall seconds per round
``fedai_transport_bytes_total``        counter    record bytes sent/received, by ``direction``
                                                  (out/in; Flower's ``count_bytes`` of every
                                                  record, without framing or metadata)
``fedai_max_client_epsilon``           gauge      largest cumulative client epsilon reported
``fedai_user_level_epsilon``           gauge      user-level epsilon (``local+user`` only)
``fedai_clients``                      gauge      clients known to the coordinator, by
                                                  ``state`` (available/unavailable/exhausted)
=====================================  =========  =================================================

Labels have bounded cardinality: failure reasons are mapped to a fixed set of classes by
:func:`reason_class`; client ids never become labels.

:class:`JsonFormatter` renders log records as one JSON object per line with a UTC
timestamp; entry points switch their handlers to it with :func:`apply_log_format`
(library code never touches handlers).

This module does not import Flower.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from fedai.errors import ConfigError

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

    from fedai.config import MonitoringSection
    from fedai.results import RoundRecord

logger = logging.getLogger(__name__)

#: Failure classes, the only values of ``fedai_client_failures_total{reason}``.
REASON_CLASSES = (
    "timeout",  # no reply within experiment.round_timeout
    "unavailable",  # the node is gone (SuperLink says unavailable, or not connected)
    "client_error",  # the ClientApp raised, or the client reported a failure
    "rejected",  # the coordinator rejected the reply (bad payload, out of range, ...)
    "evaluate",  # the evaluation step failed for this client
    "straggler",  # dropped as a straggler (strategy.drop_stragglers)
    "refused",  # the client refused to train (privacy budget)
    "other",
)
#: Client stages counted per round.
STAGES = ("sampled", "trained", "failed", "refused")
#: Round statuses (:class:`fedai.results.RoundRecord.status`).
STATUSES = ("ok", "failed", "skipped")
#: Client states reported by ``fedai_clients``.
CLIENT_STATES = ("available", "unavailable", "exhausted")
#: Round-seconds buckets: in-process rounds take well under a second, deployment rounds
#: tens of seconds, deadlines up to an hour.
ROUND_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

# Error types whose name in a failure text means the coordinator rejected the reply.
_REJECTION_TYPES = (
    "ProtocolError",
    "CorruptPayloadError",
    "ContributionError",
    "KeyMismatchError",
)
# Names of the standard LogRecord attributes (anything else came in through ``extra=``).
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers whose handlers :func:`apply_log_format` reformats: the root and fedai's own.
LOGGERS = ("", "fedai", "server", "clients")


def reason_class(text: str) -> str:
    """Map a failure text from the round loop to one of :data:`REASON_CLASSES`.

    The texts come from fedai's own round loop and Flower's error replies; anything not
    recognised is ``other``, so the label's cardinality stays bounded whatever a client
    sends.

    Example:
        >>> reason_class("no reply within experiment.round_timeout (5 s)")
        'timeout'
        >>> reason_class("evaluate: no reply")
        'evaluate'
    """
    low = text.strip().lower()
    if low.startswith("evaluate:"):
        return "evaluate"
    if low.startswith("no reply") or "timed out" in low or "deadline" in low:
        return "timeout"
    if "unavailable" in low or "not connected" in low:
        return "unavailable"
    if low.startswith("straggler"):
        return "straggler"
    if low.startswith("refused"):
        return "refused"
    head = text.split(":", 1)[0].strip()
    if head in _REJECTION_TYPES or low.startswith("sum "):
        return "rejected"
    # What is left came from the client or its node: an error reply, a reported failure.
    return "client_error" if low else "other"


class RunMetrics:
    """The coordinator's metrics for one run, in a registry of their own.

    Args:
        registry: Where to register the metrics; a new private registry by default.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rounds_completed = Counter(
            "fedai_rounds_completed", "Rounds finished, by status", ["status"], registry=r
        )
        self.round = Gauge("fedai_round", "Number of the last finished round", registry=r)
        self.rounds_planned = Gauge(
            "fedai_rounds_planned", "Rounds the run is configured for", registry=r
        )
        self.round_clients = Gauge(
            "fedai_round_clients",
            "Clients in the last finished round, by stage",
            ["stage"],
            registry=r,
        )
        self.client_rounds = Counter(
            "fedai_client_rounds", "Client-rounds, by stage", ["stage"], registry=r
        )
        self.failures = Counter(
            "fedai_client_failures",
            "Failed client-rounds, by reason class",
            ["reason"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "fedai_round_seconds",
            "Wall seconds per round",
            buckets=ROUND_SECONDS_BUCKETS,
            registry=r,
        )
        self.transport_bytes = Counter(
            "fedai_transport_bytes",
            "Record bytes the coordinator sent (out) and received (in)",
            ["direction"],
            registry=r,
        )
        self.max_epsilon = Gauge(
            "fedai_max_client_epsilon", "Largest cumulative client epsilon reported", registry=r
        )
        self.user_epsilon = Gauge(
            "fedai_user_level_epsilon", "User-level epsilon (privacy.mode local+user)", registry=r
        )
        self.clients = Gauge(
            "fedai_clients", "Clients known to the coordinator, by state", ["state"], registry=r
        )
        # Every label value exists from the start (a dashboard shows 0, not "no data").
        for status in STATUSES:
            self.rounds_completed.labels(status=status)
        for stage in STAGES:
            self.round_clients.labels(stage=stage)
        for stage in ("sampled", "trained"):
            self.client_rounds.labels(stage=stage)
        for reason in REASON_CLASSES:
            self.failures.labels(reason=reason)
        for direction in ("out", "in"):
            self.transport_bytes.labels(direction=direction)
        for state in CLIENT_STATES:
            self.clients.labels(state=state)
        self._bytes_seen = {"out": 0, "in": 0}

    def start(self, *, rounds_planned: int) -> None:
        """Record the run's planned length (before round 1)."""
        self.rounds_planned.set(rounds_planned)

    def observe_round(self, record: RoundRecord) -> None:
        """Account one finished round from its record."""
        status = record.status if record.status in STATUSES else "failed"
        self.rounds_completed.labels(status=status).inc()
        self.round.set(record.round)
        self.round_seconds.observe(max(record.seconds, 0.0))
        counts = {
            "sampled": len(record.sampled),
            "trained": len(record.trained),
            "failed": len(record.failures),
            "refused": len(record.refused),
        }
        for stage, count in counts.items():
            self.round_clients.labels(stage=stage).set(count)
        self.client_rounds.labels(stage="sampled").inc(counts["sampled"])
        self.client_rounds.labels(stage="trained").inc(counts["trained"])
        for text in record.failures.values():
            self.failures.labels(reason=reason_class(text)).inc()
        if record.refused:
            self.failures.labels(reason="refused").inc(len(record.refused))
        eps = record.privacy.get("max_epsilon")
        if isinstance(eps, int | float) and math.isfinite(eps):
            self.max_epsilon.set(eps)
        user = record.privacy.get("user_level")
        if isinstance(user, Mapping) and isinstance(user.get("epsilon"), int | float):
            self.user_epsilon.set(float(user["epsilon"]))

    def observe_transport(self, *, bytes_out: int, bytes_in: int) -> None:
        """Take the transport's cumulative byte totals; the counters grow by the difference."""
        for direction, total in (("out", bytes_out), ("in", bytes_in)):
            delta = total - self._bytes_seen[direction]
            if delta > 0:
                self.transport_bytes.labels(direction=direction).inc(delta)
                self._bytes_seen[direction] = total

    def observe_clients(self, states: Mapping[str, int]) -> None:
        """Set how many clients are in each of :data:`CLIENT_STATES`."""
        for state in CLIENT_STATES:
            self.clients.labels(state=state).set(states.get(state, 0))

    def render(self) -> bytes:
        """The metrics in Prometheus' text exposition format."""
        return generate_latest(self.registry)


class MetricsServer:
    """An HTTP endpoint serving one :class:`RunMetrics` on ``host:port`` (``/metrics``).

    Raises:
        ConfigError: The address cannot be bound (port in use, unknown host).
    """

    def __init__(self, metrics: RunMetrics, *, host: str = "127.0.0.1", port: int) -> None:
        try:
            server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as err:
            raise ConfigError(
                f"monitoring.metrics_port: cannot serve metrics on {host}:{port}: "
                f"{err.strerror or err}"
            ) from err
        self.metrics = metrics
        self.host = host
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serve_metrics(
    section: MonitoringSection, *, rounds_planned: int = 0
) -> Iterator[RunMetrics | None]:
    """Serve a fresh :class:`RunMetrics` while the block runs; ``None`` when port is 0.

    Raises:
        ConfigError: The configured address cannot be bound.
    """
    if section.metrics_port == 0:
        yield None
        return
    metrics = RunMetrics()
    metrics.start(rounds_planned=rounds_planned)
    with MetricsServer(metrics, host=section.metrics_host, port=section.metrics_port) as server:
        logger.info("metrics on http://%s:%d/metrics", server.host, server.port)
        yield metrics


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``, ``message``.

    Fields passed with ``extra=`` (e.g. ``logger.info("...", extra={"round": 3})``) are
    added when they are JSON-serialisable (others as their ``str``); an exception adds
    ``exception`` with the formatted traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in doc and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``[monitoring] log_format``: JSON lines, or text with UTC timestamps.

    Raises:
        ConfigError: ``log_format`` is neither ``text`` nor ``json``.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        formatter = logging.Formatter(TEXT_FORMAT)
        formatter.converter = time.gmtime
        formatter.default_msec_format = "%s.%03dZ"
        return formatter
    raise ConfigError(f"log format must be 'text' or 'json'; got {log_format!r}")


def apply_log_format(log_format: str, *, loggers: tuple[str, ...] = LOGGERS) -> int:
    """Give every handler already on ``loggers`` the :func:`formatter_for` ``log_format``.

    For entry points, after they installed their handlers (``fedai.logsetup``); library
    code never calls it. ``text`` keeps the handlers' own format; ``json`` switches them
    to :class:`JsonFormatter`. Returns how many handlers were changed.

    Raises:
        ConfigError: ``log_format`` is neither ``text`` nor ``json``.
    """
    formatter = formatter_for(log_format)
    if log_format == "text":
        return 0
    changed = 0
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
            changed += 1
    return changed


__all__ = [
    "CLIENT_STATES",
    "REASON_CLASSES",
    "JsonFormatter",
    "MetricsServer",
    "RunMetrics",
    "apply_log_format",
    "formatter_for",
    "reason_class",
    "serve_metrics",
]
