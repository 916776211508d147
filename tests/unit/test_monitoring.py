import io
import json
import logging
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedai.config import ExperimentConfig
from fedai.errors import ConfigError
from fedai.federation.deploy import free_port
from fedai.monitoring import (
    REASON_CLASSES,
    JsonFormatter,
    MetricsServer,
    RunMetrics,
    apply_log_format,
    formatter_for,
    reason_class,
    serve_metrics,
)
from fedai.results import RoundRecord


def _record(round_=1, **kw):
    base = {"round": round_, "accuracy": 0.5, "loss": 1.0, "seconds": 0.3}
    base.update(kw)
    return RoundRecord(**base)


def _value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


# ---------------------------------------------------------------- RunMetrics
def test_every_label_value_exists_at_zero_before_the_first_round():
    m = RunMetrics()
    m.start(rounds_planned=7)
    assert _value(m, "fedai_rounds_planned") == 7
    for status in ("ok", "failed", "skipped"):
        assert _value(m, "fedai_rounds_completed_total", status=status) == 0
    for reason in REASON_CLASSES:
        assert _value(m, "fedai_client_failures_total", reason=reason) == 0
    assert _value(m, "fedai_transport_bytes_total", direction="out") == 0


def test_observe_round_counts_rounds_clients_failures_seconds_and_epsilon():
    # Arrange
    m = RunMetrics()
    first = _record(
        1,
        seconds=0.4,
        sampled=["0", "1", "2"],
        trained=["0", "2"],
        failures={"1": "no reply within experiment.round_timeout (5 s)"},
        privacy={"max_epsilon": 1.25},
    )
    second = _record(
        2,
        seconds=12.0,
        status="failed",
        sampled=["0", "1", "2"],
        trained=[],
        failures={"0": "ProtocolError: num-examples must be > 0", "2": "evaluate: no reply"},
        refused={"1": "budget exhausted"},
        privacy={"max_epsilon": 2.5, "user_level": {"epsilon": 3.0}},
    )
    # Act
    m.observe_round(first)
    m.observe_round(second)
    # Assert
    assert _value(m, "fedai_rounds_completed_total", status="ok") == 1
    assert _value(m, "fedai_rounds_completed_total", status="failed") == 1
    assert _value(m, "fedai_round") == 2
    assert _value(m, "fedai_round_clients", stage="sampled") == 3
    assert _value(m, "fedai_round_clients", stage="trained") == 0
    assert _value(m, "fedai_round_clients", stage="failed") == 2
    assert _value(m, "fedai_round_clients", stage="refused") == 1
    assert _value(m, "fedai_client_rounds_total", stage="sampled") == 6
    assert _value(m, "fedai_client_rounds_total", stage="trained") == 2
    assert _value(m, "fedai_client_failures_total", reason="timeout") == 1
    assert _value(m, "fedai_client_failures_total", reason="rejected") == 1
    assert _value(m, "fedai_client_failures_total", reason="evaluate") == 1
    assert _value(m, "fedai_client_failures_total", reason="refused") == 1
    assert _value(m, "fedai_round_seconds_count") == 2
    assert _value(m, "fedai_round_seconds_sum") == pytest.approx(12.4)
    assert _value(m, "fedai_round_seconds_bucket", le="0.5") == 1
    assert _value(m, "fedai_round_seconds_bucket", le="30.0") == 2
    assert _value(m, "fedai_max_client_epsilon") == 2.5
    assert _value(m, "fedai_user_level_epsilon") == 3.0


def test_transport_counters_grow_by_the_difference_of_cumulative_totals():
    m = RunMetrics()
    m.observe_transport(bytes_out=1000, bytes_in=300)
    m.observe_transport(bytes_out=1500, bytes_in=300)
    assert _value(m, "fedai_transport_bytes_total", direction="out") == 1500
    assert _value(m, "fedai_transport_bytes_total", direction="in") == 300


def test_client_states_gauge():
    m = RunMetrics()
    m.observe_clients({"available": 3, "unavailable": 1})
    assert _value(m, "fedai_clients", state="available") == 3
    assert _value(m, "fedai_clients", state="unavailable") == 1
    assert _value(m, "fedai_clients", state="exhausted") == 0


def test_two_runs_in_one_process_do_not_share_counters():
    a, b = RunMetrics(), RunMetrics()
    a.observe_round(_record(1))
    assert _value(a, "fedai_rounds_completed_total", status="ok") == 1
    assert _value(b, "fedai_rounds_completed_total", status="ok") == 0


# ---------------------------------------------------------------- reason classes
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no reply within experiment.round_timeout (3600 s)", "timeout"),
        ("evaluate: no reply", "evaluate"),
        ("evaluate: RuntimeError: evaluation crashed", "evaluate"),
        (
            "Node Unavailable - The destination node failed to report a heartbeat",
            "unavailable",
        ),
        ("straggler dropped (strategy.drop_stragglers)", "straggler"),
        ("ProtocolError: num-examples must be > 0; got 0.0", "rejected"),
        ("CorruptPayloadError: ciphertext truncated", "rejected"),
        ("ContributionError: layout differs", "rejected"),
        ("RuntimeError: disk on fire", "client_error"),
        ("error code 2", "client_error"),
        ("data file missing", "client_error"),
        ("", "other"),
    ],
)
def test_reason_class_of_the_round_loops_texts(text, expected):
    assert reason_class(text) == expected


@given(st.text(max_size=200))
def test_reason_class_is_always_one_of_the_fixed_classes(text):
    assert reason_class(text) in REASON_CLASSES


# ---------------------------------------------------------------- HTTP endpoint
def test_metrics_server_serves_the_registry_and_releases_the_port():
    # Arrange
    m = RunMetrics()
    m.observe_round(_record(1))
    port = free_port()
    # Act
    with MetricsServer(m, port=port) as server:
        body = _scrape(server.port)
        m.observe_round(_record(2))
        later = _scrape(server.port)
    # Assert
    assert 'fedai_rounds_completed_total{status="ok"} 1.0' in body
    assert 'fedai_rounds_completed_total{status="ok"} 2.0' in later
    with pytest.raises(urllib.error.URLError):
        _scrape(port)


def test_a_port_in_use_is_a_config_error_naming_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            MetricsServer(RunMetrics(), port=port)


def test_serve_metrics_is_off_by_default_and_on_with_a_port():
    cfg = ExperimentConfig.from_mapping({})
    with serve_metrics(cfg.monitoring) as metrics:
        assert metrics is None
    port = free_port()
    on = ExperimentConfig.from_mapping({"monitoring": {"metrics_port": port}})
    with serve_metrics(on.monitoring, rounds_planned=4) as metrics:
        assert metrics is not None
        assert "fedai_rounds_planned 4.0" in _scrape(port)


# ---------------------------------------------------------------- config
def test_monitoring_and_dropout_keys_are_validated_together():
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_mapping(
            {
                "monitoring": {"metrics_port": 70000, "metrics_host": ""},
                "experiment": {
                    "clients_per_round": 3,
                    "min_replies": 4,
                    "round_timeout": 0,
                    "retry_unavailable_every": 0,
                },
            }
        )
    text = str(info.value)
    assert "monitoring.metrics_port must be in [0, 65535]; got 70000" in text
    assert "monitoring.metrics_host" in text
    assert "experiment.min_replies must be in [1, 3]; got 4" in text
    assert "experiment.round_timeout must be in (0, 604800]" in text
    assert "experiment.retry_unavailable_every must be in [1, 100000]" in text


def test_log_format_must_be_text_or_json():
    with pytest.raises(ConfigError, match=r"monitoring\.log_format"):
        ExperimentConfig.from_mapping({"monitoring": {"log_format": "xml"}})


# ---------------------------------------------------------------- logs
def test_json_formatter_writes_one_object_with_a_utc_timestamp_and_extras():
    record = logging.LogRecord("server.rounds", logging.WARNING, "f.py", 1, "round %d", (3,), None)
    record.client = "org-a"
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["message"] == "round 3"
    assert doc["level"] == "WARNING"
    assert doc["logger"] == "server.rounds"
    assert doc["client"] == "org-a"
    assert doc["ts"].endswith("+00:00")


def test_json_formatter_includes_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in doc["exception"]


def test_apply_log_format_switches_handlers_to_json():
    # Arrange: a handler on a logger of its own, as fedai.logsetup installs them
    owner = logging.getLogger("fedai_test_monitoring_owner")
    owner.propagate = False
    stream = io.StringIO()
    owner.addHandler(logging.StreamHandler(stream))
    log = logging.getLogger("fedai_test_monitoring_owner.child")
    try:
        # Act
        changed = apply_log_format("json", loggers=("fedai_test_monitoring_owner",))
        log.warning("hello %s", "json")
    finally:
        owner.handlers.clear()
    # Assert
    assert changed == 1
    doc = json.loads(stream.getvalue())
    assert doc["message"] == "hello json"
    assert doc["logger"] == "fedai_test_monitoring_owner.child"


def test_text_format_keeps_handlers_and_bad_formats_are_refused():
    assert apply_log_format("text") == 0
    assert "%(asctime)s" in formatter_for("text")._fmt
    with pytest.raises(ConfigError, match="'text' or 'json'"):
        formatter_for("yaml")


# ---------------------------------------------------------------- Grafana dashboard
def test_the_grafana_dashboard_uses_exactly_the_exported_metric_names():
    # Arrange: every sample name the endpoint exports
    exported = set()
    for family in RunMetrics().registry.collect():
        exported.update(sample.name for sample in family.samples)
        exported.add(family.name)
    dashboard = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fedai.json"
    doc = json.loads(dashboard.read_text())
    # Act
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bfedai_[a-z_]+", e)}
    # Assert: nothing on the dashboard the endpoint lacks, no exported family left off
    assert used <= exported, used - exported
    families = {f.name for f in RunMetrics().registry.collect()}
    assert all(any(name.startswith(f) for name in used) for f in families)
