"""The coordinator's Prometheus endpoint and JSON logs during a real (in-process) run."""

import json
import urllib.error
import urllib.request

import pytest

import server.app
from fedai.cli import main as cli_main
from fedai.federation.deploy import free_port

pytestmark = pytest.mark.integration

SMALL = [
    "--set",
    "experiment.rounds=3",
    "--set",
    "experiment.num_clients=4",
    "--set",
    "experiment.clients_per_round=4",
    "--set",
    "train.local_epochs=1",
]


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _value(text, sample):
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in the scrape")


def test_simulate_with_metrics_port_serves_a_round_counter_that_increases(tmp_path, monkeypatch):
    # Arrange: scrape the endpoint whenever the CLI prints a round line
    port = free_port()
    scrapes = []
    original = server.app.format_progress

    def scraping_progress(record, total):
        scrapes.append(_scrape(port))
        return original(record, total)

    monkeypatch.setattr(server.app, "format_progress", scraping_progress)
    # Act
    status = cli_main(["simulate", "--metrics-port", str(port), "--out", str(tmp_path), *SMALL])
    # Assert
    assert status == 0
    assert [_value(s, "fedai_round") for s in scrapes] == [1, 2, 3]
    ok = [_value(s, 'fedai_rounds_completed_total{status="ok"}') for s in scrapes]
    assert ok == [1, 2, 3]
    assert all(_value(s, "fedai_rounds_planned") == 3 for s in scrapes)
    assert [_value(s, "fedai_round_seconds_count") for s in scrapes] == [1, 2, 3]
    assert [_value(s, 'fedai_round_clients{stage="trained"}') for s in scrapes] == [4, 4, 4]
    sent = [_value(s, 'fedai_transport_bytes_total{direction="out"}') for s in scrapes]
    received = [_value(s, 'fedai_transport_bytes_total{direction="in"}') for s in scrapes]
    assert sent[0] > 0
    assert sent == sorted(sent)
    assert len(set(sent)) == 3
    assert received == sorted(received)
    assert len(set(received)) == 3
    # ... and the port is released when the run ends
    with pytest.raises(urllib.error.URLError):
        _scrape(port)


def test_json_log_format_writes_fedai_warnings_as_json_lines(tmp_path, capsys):
    # Arrange: a dropped straggler is a failed client, logged as a warning
    args = [
        "simulate",
        "--out",
        str(tmp_path),
        "--set",
        "monitoring.log_format=json",
        "--set",
        "experiment.rounds=1",
        "--set",
        "experiment.num_clients=3",
        "--set",
        "experiment.clients_per_round=3",
        "--set",
        "strategy.straggler_fraction=0.4",
        "--set",
        "strategy.drop_stragglers=true",
    ]
    # Act
    cli_main(args)
    # Assert
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failed = [doc for doc in lines if doc["message"].startswith("round 1: client ")]
    assert len(failed) == 1
    assert failed[0]["message"].endswith("failed: straggler dropped (strategy.drop_stragglers)")
    assert failed[0]["logger"] == "server.rounds"
    assert failed[0]["level"] == "WARNING"
    assert failed[0]["ts"].endswith("+00:00")
