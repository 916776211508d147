"""``fedai simulate`` writes results a researcher can cite: provenance, final epsilon, CSV."""

import csv
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.rdp import RdpAccountant

from fedai.cli import main as cli_main
from fedai.results import PROVENANCE_PACKAGES, ROUND_COLUMNS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DP_DIGITS = ROOT / "experiments" / "dp_digits.toml"


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``fedai <argv>`` in-process, with ``sys.argv`` as the shell would set it."""
    monkeypatch.setattr("sys.argv", ["fedai", *argv])
    return cli_main(argv)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def rdp_epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """Google dp-accounting's RDP epsilon of ``[sigma, q, steps]`` entries (not fedai's)."""
    accountant = RdpAccountant()
    for sigma, q, steps in history:
        accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), int(steps))
    return float(accountant.get_epsilon(delta))


def check_provenance(doc: dict[str, Any], argv: list[str]) -> None:
    p = doc["provenance"]
    for name in ("fedai", *PROVENANCE_PACKAGES):
        assert p["versions"][name] == metadata.version(name)
    assert p["versions"]["python"]
    assert p["command_line"] == ["fedai", *argv]
    assert p["started_at"] <= p["ended_at"]
    assert p["cpu_count"] >= 1
    if (ROOT / ".git").exists():
        assert len(p["git"]["commit"]) == 40


def test_quickstart_20_rounds_results_cite_versions_command_and_no_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    out = tmp_path / "run"
    argv = ["simulate", "--out", str(out), "--set", "experiment.rounds=20"]
    # Act
    status = run_cli(argv, monkeypatch)
    capsys.readouterr()
    # Assert
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    check_provenance(doc, argv)
    assert doc["final"]["epsilon"] is None
    assert doc["final"]["user_epsilon"] is None
    header, rows = read_csv(out / "rounds.csv")
    assert header == list(ROUND_COLUMNS)
    assert [int(r["round"]) for r in rows] == list(range(1, 21))
    assert [float(r["accuracy"]) for r in rows] == [r["accuracy"] for r in doc["rounds"]]
    assert all(r["max_epsilon"] == "" for r in rows)
    assert float(rows[-1]["accuracy"]) == doc["final"]["accuracy"]
    assert (out / "accuracy.png").stat().st_size > 1000
    assert not (out / "accuracy_vs_epsilon.png").exists()


def test_a_dp_run_reports_its_final_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: experiments/dp_digits.toml cut to 2 rounds (sigma calibrated for 2)
    out = tmp_path / "dp"
    argv = [
        "simulate",
        "--config",
        str(DP_DIGITS),
        "--out",
        str(out),
        "--set",
        "experiment.rounds=2",
    ]
    # Act
    status = run_cli(argv, monkeypatch)
    capsys.readouterr()
    # Assert
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    check_provenance(doc, argv)
    final, last = doc["final"], doc["rounds"][-1]
    assert isinstance(final["epsilon"], float)
    assert final["epsilon"] == last["privacy"]["max_epsilon"]
    assert final["delta"] == 1e-5
    assert final["user_epsilon"] is None
    # the figure is the largest client epsilon dp-accounting computes from the histories
    reports = last["privacy"]["clients"].values()
    independent = max(rdp_epsilon(r["history"], r["delta"]) for r in reports)
    assert final["epsilon"] == pytest.approx(independent, rel=0.01)
    assert final["epsilon"] <= doc["config"]["privacy"]["budget_epsilon"]
    _header, rows = read_csv(out / "rounds.csv")
    assert len(rows) == 2
    assert [float(r["max_epsilon"]) for r in rows] == [
        r["privacy"]["max_epsilon"] for r in doc["rounds"]
    ]
    assert (out / "accuracy_vs_epsilon.png").exists()
