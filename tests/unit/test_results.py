"""results.json provenance and final epsilon, rounds.csv, the accuracy plot."""

import csv
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy
import pytest

from fedai import results
from fedai.results import (
    PROVENANCE_PACKAGES,
    ROUND_COLUMNS,
    RoundRecord,
    RunSummary,
    collect_provenance,
    git_revision,
    plot_accuracy,
    write_results,
)

ROOT = Path(__file__).resolve().parents[2]
ARGV = ["fedai", "simulate", "--out", "runs/x", "--set", "experiment.rounds=4"]


# ---------------------------------------------------------------------- helpers
def privacy(max_eps: float, *, user: float | None = None) -> dict[str, Any]:
    """A round's privacy view as the round loop writes it (two clients' reports)."""
    view: dict[str, Any] = {
        "clients": {
            "0": {"epsilon": max_eps, "delta": 1e-5, "rounds_trained": 1},
            "1": {"epsilon": max_eps / 2, "delta": 2e-5, "rounds_trained": 1},
        },
        "max_epsilon": max_eps,
    }
    if user is not None:
        view["user_level"] = {"epsilon": user, "delta": 1e-6, "client_sampling": "poisson"}
    return view


def summary(*, dp: bool = False, user: bool = False) -> RunSummary:
    """Four rounds: ok, failed, skipped, ok; with DP the failed round still spends."""
    s = RunSummary(config={"experiment": {"name": "unit"}}, seconds=12.3456)
    s.rounds = [
        RoundRecord(
            round=1,
            accuracy=0.5,
            loss=1.25,
            seconds=1.5,
            sampled=["0", "1"],
            trained=["0", "1"],
            num_examples=120.0,
        ),
        RoundRecord(
            round=2,
            accuracy=None,
            loss=None,
            seconds=2.25,
            status="failed",
            reason="=aggregate failed the clients' bounds check, previous model kept",
            sampled=["0", "1"],
            trained=["0"],
            num_examples=60.0,
        ),
        RoundRecord(
            round=3,
            accuracy=None,
            loss=None,
            seconds=0.125,
            status="skipped",
            reason="Poisson client sampling drew no client this round",
        ),
        RoundRecord(
            round=4,
            accuracy=0.8125,
            loss=0.5,
            seconds=1.0 / 3.0,
            sampled=["0", "1"],
            trained=["0", "1"],
            num_examples=121.5,
        ),
    ]
    if dp:
        for r, eps in zip(s.rounds, (1.0, 2.0, 2.0, 3.5), strict=True):
            r.privacy = privacy(eps, user=eps / 10 if user else None)
    return s


class FigureCatcher:
    """Keeps the figures a plot function closes, for inspection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.figures: list[Any] = []
        self._close = plt.close
        monkeypatch.setattr(plt, "close", self.figures.append)

    def close_all(self) -> None:
        for fig in self.figures:
            self._close(fig)


def texts(fig: Any) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ---------------------------------------------------------------------- provenance
def test_provenance_has_versions_command_line_times_and_host() -> None:
    # Act
    p = collect_provenance(started_at="2025-01-31T12:00:00+00:00", argv=ARGV)
    # Assert
    assert set(p) == {
        "versions",
        "git",
        "command_line",
        "started_at",
        "ended_at",
        "cpu_count",
        "platform",
    }
    assert set(p["versions"]) == {"fedai", "python", *PROVENANCE_PACKAGES}
    assert all(isinstance(v, str) and v for v in p["versions"].values())
    assert p["versions"]["numpy"] == numpy.__version__  # the module's own, not metadata
    assert p["versions"]["fedai"] == metadata.version("fedai")
    assert p["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert p["command_line"] == ARGV
    assert p["started_at"] == "2025-01-31T12:00:00+00:00"
    assert datetime.fromisoformat(p["ended_at"]).utcoffset().total_seconds() == 0
    assert isinstance(p["cpu_count"], int)
    assert p["cpu_count"] >= 1
    assert isinstance(p["platform"], str)
    assert p["platform"]
    json.dumps(p)  # JSON-able


def test_provenance_command_line_defaults_to_sys_argv_and_hides_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.argv", ["fedai", "infer", "--token", "s3cret", "--token=abc"])
    p = collect_provenance(started_at=None)
    assert p["command_line"] == ["fedai", "infer", "--token", "***", "--token=***"]
    assert "s3cret" not in json.dumps(p)


def test_a_missing_package_is_null_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name == "tenseal":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(results.metadata, "version", version)
    versions = collect_provenance(started_at=None, argv=[])["versions"]
    assert versions["tenseal"] is None
    assert versions["torch"] == real("torch")


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_git_commit_is_this_checkouts_head() -> None:
    # Arrange: HEAD as git itself reports it
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Act
    git = collect_provenance(started_at=None, argv=[])["git"]
    # Assert
    assert git is not None
    assert git["commit"] == head
    assert len(head) == 40
    assert isinstance(git["dirty"], bool)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_revision_only_for_the_top_of_a_checkout(tmp_path: Path) -> None:
    # Arrange: a repository with one commit and a subdirectory (like a venv in a project)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "f.txt").write_text("a")
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *args], check=True, env=env, capture_output=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, env=env, capture_output=True, text=True
    ).stdout.strip()
    # Act / Assert: clean, then dirty after a tracked file changes
    assert git_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "f.txt").write_text("b")
    assert git_revision(tmp_path) == {"commit": head, "dirty": True}
    # ... and a directory inside the checkout is not its top: no commit claimed
    assert git_revision(tmp_path / "sub") is None


def test_git_is_null_outside_a_checkout_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_revision(tmp_path) is None
    monkeypatch.setattr(results.shutil, "which", lambda _name: None)
    assert git_revision(ROOT) is None
    assert collect_provenance(started_at=None, argv=[])["git"] is None


def test_summary_start_time_is_utc_iso() -> None:
    start = datetime.fromisoformat(RunSummary(config={}).started_at)
    assert start.utcoffset() is not None
    assert start.utcoffset().total_seconds() == 0


def test_results_json_carries_provenance_with_the_summary_start(tmp_path: Path) -> None:
    s = summary()
    s.started_at = "2025-01-31T12:00:00+00:00"
    path = write_results(tmp_path, s, argv=ARGV)
    doc = json.loads(path.read_text())
    assert doc["provenance"]["started_at"] == "2025-01-31T12:00:00+00:00"
    assert doc["provenance"]["command_line"] == ARGV
    assert doc["provenance"]["ended_at"] >= doc["provenance"]["started_at"]


# ---------------------------------------------------------------------- final epsilon
def test_final_epsilon_is_null_without_dp() -> None:
    final = summary().final
    assert final["epsilon"] is None
    assert final["delta"] is None
    assert final["user_epsilon"] is None
    assert final["user_delta"] is None
    assert final["accuracy"] == 0.8125


def test_final_epsilon_is_the_last_reported_max_epsilon_even_after_failed_rounds() -> None:
    # Arrange: the last round fails after spending (epsilon 3.5, up from 2.0)
    s = summary(dp=True)
    s.rounds[-1].status, s.rounds[-1].accuracy, s.rounds[-1].loss = "failed", None, None
    # Act
    final = s.final
    # Assert: the spend of the failed round, not the last successful round's 1.0
    assert final["epsilon"] == 3.5 == s.rounds[-1].privacy["max_epsilon"]
    assert final["delta"] == 2e-5  # the largest client delta
    assert final["user_epsilon"] is None
    assert final["accuracy"] == 0.5  # accuracy still from the last accepted round


def test_final_user_epsilon_with_user_level_dp() -> None:
    final = summary(dp=True, user=True).final
    assert final["epsilon"] == 3.5
    assert final["user_epsilon"] == pytest.approx(0.35)
    assert final["user_delta"] == 1e-6


def test_final_epsilon_is_null_when_no_round_reported_privacy() -> None:
    s = RunSummary(config={"privacy": {"mode": "local"}})
    assert s.final["epsilon"] is None


# ---------------------------------------------------------------------- rounds.csv
@pytest.mark.parametrize("dp", [False, True])
def test_rounds_csv_has_one_row_per_round_matching_results_json(tmp_path: Path, dp: bool) -> None:
    # Act
    doc = json.loads(write_results(tmp_path, summary(dp=dp, user=dp), argv=ARGV).read_text())
    with (tmp_path / "rounds.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, list(reader)
    # Assert
    assert header == list(ROUND_COLUMNS)
    assert len(rows) == len(doc["rounds"]) == 4

    def number(cell: str) -> float | None:
        return None if cell == "" else float(cell)

    for row, rec in zip(rows, doc["rounds"], strict=True):
        assert int(row["round"]) == rec["round"]
        assert row["status"] == rec["status"]
        for key in ("accuracy", "loss", "seconds", "num_examples"):
            assert number(row[key]) == rec[key]  # exact: same digits as the JSON
        assert int(row["clients_sampled"]) == len(rec["sampled"])
        assert int(row["clients_trained"]) == len(rec["trained"])
        assert number(row["max_epsilon"]) == rec["privacy"].get("max_epsilon")
        user = rec["privacy"].get("user_level")
        assert number(row["user_epsilon"]) == (user["epsilon"] if user else None)
        assert row["reason"].lstrip("'") == rec["reason"]
    # a reason a spreadsheet would evaluate is quoted
    assert rows[1]["reason"].startswith("'=")
    assert rows[2]["reason"] == doc["rounds"][2]["reason"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temp file


def test_rounds_csv_of_an_empty_run_has_only_the_header(tmp_path: Path) -> None:
    write_results(tmp_path, RunSummary(config={}), argv=[])
    lines = (tmp_path / "rounds.csv").read_text().splitlines()
    assert lines == [",".join(ROUND_COLUMNS)]


# ---------------------------------------------------------------------- plots
def test_accuracy_plot_has_loss_axis_integer_ticks_and_final_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catcher = FigureCatcher(monkeypatch)
    path = tmp_path / "accuracy.png"
    try:
        # Act
        plot_accuracy(path, summary())
        # Assert
        assert matplotlib.get_backend().lower() == "agg"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (fig,) = catcher.figures
        acc_ax, loss_ax = fig.axes
        assert loss_ax.get_ylabel() == "federated test loss"
        assert list(loss_ax.lines[0].get_ydata()) == [1.25, 0.5]
        assert list(acc_ax.lines[0].get_ydata()) == [0.5, 0.8125]
        ticks = [t for t in acc_ax.get_xticks() if 0.5 <= t <= 4.5]
        assert ticks
        assert all(float(t).is_integer() for t in ticks)
        assert "0.8125" in texts(fig)
        assert "0.5000" in texts(fig)  # final loss
        labels = acc_ax.get_legend_handles_labels()[1]
        assert {"failed round", "skipped round"} <= set(labels)
    finally:
        catcher.close_all()


def test_a_run_without_a_successful_round_draws_a_clear_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: every round failed
    s = summary()
    for r in s.rounds:
        r.status, r.accuracy, r.loss, r.reason = "failed", None, None, "no client evaluated"
    catcher = FigureCatcher(monkeypatch)
    path = tmp_path / "accuracy.png"
    try:
        # Act
        plot_accuracy(path, s)
        # Assert
        assert path.stat().st_size > 1000
        (fig,) = catcher.figures
        (text,) = texts(fig)
        assert text.startswith("no successful round (4 rounds run)")
        assert "no client evaluated" in text
        assert not fig.axes[0].lines  # no accuracy curve
    finally:
        catcher.close_all()


def test_a_run_with_no_round_at_all_draws_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = RunSummary(config={}, stop_reason="no client can train: budget exhausted")
    catcher = FigureCatcher(monkeypatch)
    try:
        plot_accuracy(tmp_path / "a.png", s)
        (fig,) = catcher.figures
        assert texts(fig) == [
            "no successful round (0 rounds run)\nno client can train: budget exhausted"
        ]
    finally:
        catcher.close_all()
    assert (tmp_path / "a.png").exists()


def test_write_results_plots_epsilon_for_dp_and_removes_a_stale_one(tmp_path: Path) -> None:
    write_results(tmp_path, summary(dp=True), argv=[])
    assert (tmp_path / "accuracy_vs_epsilon.png").exists()
    write_results(tmp_path, summary(), argv=[])
    assert not (tmp_path / "accuracy_vs_epsilon.png").exists()
    assert (tmp_path / "accuracy.png").exists()
