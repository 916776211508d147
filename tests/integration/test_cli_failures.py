"""Failures of simulate / audit / privacy plan a user has met, as a table.

Every case ends with one line naming the cause and a non-zero exit status: 2 when the
problem is found before anything runs (nothing is written), 1 when a run started and
failed (results.json still says why, in ``outcome``). Cases are small (1-2 rounds, 3
clients) so each takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedai.cli import main
from fedai.crypto import CLIENT_BUNDLE, COORDINATOR_BUNDLE, create_keys
from fedai.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ProtocolError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMALL = (
    "--set",
    "experiment.rounds=1",
    "--set",
    "experiment.num_clients=3",
    "--set",
    "experiment.clients_per_round=3",
)
DP = ("--set", 'privacy.mode="local"', "--set", "privacy.noise_multiplier=1.0")
CKKS = ("--set", 'secure_aggregation.scheme="ckks"')


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key sets (good, swapped, edited MAC key), a file, and an unscaled .npz."""
    root = tmp_path_factory.mktemp("seen")
    good, other = root / "keys", root / "other-keys"
    create_keys(good)
    create_keys(other)
    swapped = root / "swapped"
    swapped.mkdir()
    (swapped / CLIENT_BUNDLE).write_bytes((good / CLIENT_BUNDLE).read_bytes())
    (swapped / COORDINATOR_BUNDLE).write_bytes((other / COORDINATOR_BUNDLE).read_bytes())
    badmac = root / "badmac"
    badmac.mkdir()
    (badmac / CLIENT_BUNDLE).write_bytes((good / CLIENT_BUNDLE).read_bytes())
    data = (good / COORDINATOR_BUNDLE).read_bytes()
    at = data.index(b'"mac_key": "') + len(b'"mac_key": "')
    flipped = b"0" if data[at : at + 1] != b"0" else b"1"
    (badmac / COORDINATOR_BUNDLE).write_bytes(data[:at] + flipped + data[at + 1 :])
    (root / "afile").write_text("not a directory")
    # breast-cancer-like features in their raw units (up to ~4000)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = rng.normal(0, 1, (300, 10)) * 1000 + y[:, None] * 500
    np.savez(root / "raw.npz", X=x, y=y)
    return {
        "keys": good,
        "swapped": swapped,
        "badmac": badmac,
        "afile": root / "afile",
        "raw": root / "raw.npz",
    }


def fedai(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


# (case, argv with {placeholders}, the cause the one error line must name)
REFUSED_BEFORE_START = [
    ("secure_mode without torchcsprng", [*DP, "--set", "privacy.secure_mode=true"], "torchcsprng"),
    ("swapped key bundle", [*CKKS, "--key-dir", "{swapped}"], "must come from one key set"),
    (
        "corrupted coordinator MAC key",
        [*CKKS, "--key-dir", "{badmac}"],
        "same payload-authentication key",
    ),
    (
        "budget below what target_epsilon needs",
        [
            "--set",
            'privacy.mode="local"',
            "--set",
            "privacy.target_epsilon=8.0",
            "--set",
            "privacy.budget_epsilon=1.0",
        ],
        "privacy.budget_epsilon",
    ),
    ("negative seed", ["--set", "experiment.seed=-1"], "experiment.seed must be in"),
    (
        "seed beyond int64",
        ["--set", "experiment.seed=99999999999999999999"],
        "experiment.seed must be in",
    ),
    ("missing CSV", ["--set", 'data.dataset="csv:{tmp}/missing.csv"'], "does not exist"),
    (
        "missing CSV under --backend ray",
        ["--backend", "ray", "--set", 'data.dataset="csv:{tmp}/missing.csv"'],
        "does not exist",
    ),
    ("--out under a file", ["--out", "{afile}/sub"], "is a file, not a directory"),
    ("--key-dir without a secure scheme", ["--key-dir", "{keys}"], "--key-dir applies only"),
    (
        "target_epsilon without DP",
        ["--set", "privacy.target_epsilon=3.0"],
        "privacy.target_epsilon applies only when privacy.mode",
    ),
    (
        "partition with synthetic",
        ["--set", 'data.dataset="synthetic"', "--set", 'data.partition="iid"'],
        "data.partition applies only to a pooled data set",
    ),
]


@pytest.mark.parametrize(
    ("argv", "cause"),
    [pytest.param(argv, cause, id=case) for case, argv, cause in REFUSED_BEFORE_START],
)
def test_refused_before_start_in_one_line(
    argv: list[str],
    cause: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Arrange
    names = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path)}
    argv = [a.format(**names) for a in argv]
    out_dir = tmp_path / "run"
    if "--out" not in argv:
        argv += ["--out", str(out_dir)]
    # Act
    code, out, err = fedai(capsys, "simulate", *SMALL, *argv)
    # Assert
    assert code == EXIT_USAGE
    assert len(err) == 1, err
    assert err[0].startswith("fedai simulate: error: ")
    assert cause in err[0]
    assert out == []
    assert not out_dir.exists()  # nothing was written


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_out_under_proc_is_refused_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fedai(capsys, "simulate", *SMALL, "--out", "/proc/fedai-x")
    assert code == EXIT_USAGE
    assert err == [err[0]]
    assert "'/proc/fedai-x'" in err[0]
    assert out == []


def test_two_thousand_clients_fail_in_at_most_three_lines(tmp_path: Path) -> None:
    # A real process: the user's experience, every line it prints counted.
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "fedai.cli", "simulate"),
            *("--set", "experiment.num_clients=2000", "--out", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == EXIT_USAGE
    assert 1 <= len(lines) <= 3, lines
    assert "over 2000 clients leaves client(s)" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["audit"], id="audit"),
        pytest.param(["privacy", "plan"], id="privacy plan"),
    ],
)
def test_audit_and_plan_report_the_partition_error_in_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*command, "--set", 'privacy.mode="local"', "--set", "privacy.noise_multiplier=1.0"]
    code, out, err = fedai(capsys, *argv, "--set", "experiment.num_clients=2000")
    assert code == EXIT_USAGE
    assert len(err) == 1, err
    assert "over 2000 clients leaves client(s)" in err[0]
    assert out == []


def test_audit_refuses_an_unwritable_out_before_training(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = fedai(capsys, "audit", "--out", f"{files['afile']}/report.json")
    assert code == EXIT_USAGE
    assert len(err) == 1
    assert "cannot be written" in err[0]


# ---------------------------------------------------------------------- results directory
def test_an_earlier_run_needs_overwrite_which_removes_its_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: an earlier (DP) run left a plot this run would not write
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    (run / "accuracy_vs_epsilon.png").write_bytes(b"stale")
    # Act / Assert: refused without --overwrite, nothing touched
    code, _, err = fedai(capsys, "simulate", *SMALL, "--out", str(run))
    assert code == EXIT_USAGE
    assert "--overwrite" in err[0]
    assert (run / "results.json").read_text() == "{}"
    # Act / Assert: replaced with it
    code, out, _ = fedai(capsys, "simulate", "-q", *SMALL, "--out", str(run), "--overwrite")
    assert code == EXIT_OK
    assert out[-1].startswith("final accuracy")
    assert not (run / "accuracy_vs_epsilon.png").exists()
    assert json.loads((run / "results.json").read_text())["outcome"]["status"] == "ok"


# ---------------------------------------------------------------------- runs that fail
def test_unscaled_features_fail_with_exit_1_and_the_clients_reason_once(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a user's raw file, used raw (standardisation off)
    argv = [
        *SMALL,
        "--set",
        "experiment.rounds=2",
        "--set",
        f'data.dataset="npz:{files["raw"]}"',
        "--set",
        'data.standardize="none"',
        "--out",
        str(tmp_path / "run"),
    ]
    # Act
    code, out, err = fedai(capsys, "simulate", "-q", *argv)
    # Assert
    assert code == EXIT_FAILED
    assert out == []
    assert len(err) == 1, err
    assert err[0].startswith("fedai simulate: failed: no round was accepted (2 of 2 failed): ")
    assert "3 of 3 clients: " in err[0]
    assert "update_bound" in err[0]
    outcome = json.loads((tmp_path / "run" / "results.json").read_text())["outcome"]
    assert outcome["exit_code"] == EXIT_FAILED
    assert outcome["reason"] in err[0]


def test_clients_own_error_reaches_the_driver_once_with_a_count() -> None:
    # The example: secure_mode raised in every client, every round (preflight
    # refuses it first; the library call skips preflight).
    from fedai.commands.simulate import simulate
    from fedai.config import ExperimentConfig
    from fedai.privacy.dpsgd import secure_rng_available
    from fedai.verdict import ClientErrors, judge

    if secure_rng_available():
        pytest.skip("torchcsprng is installed here")
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 2, "num_clients": 3, "clients_per_round": 3},
            "privacy": {"mode": "local", "noise_multiplier": 1.0, "secure_mode": True},
        }
    )
    errors = ClientErrors()
    outcome = simulate(cfg, verbose=False, client_errors=errors)
    verdict = judge(outcome.summary, planned_rounds=2, num_clients=3, errors=errors)
    assert verdict.exit_code == EXIT_FAILED
    assert verdict.reason.startswith(
        "no round was accepted (2 of 2 failed): 3 of 3 clients: secure_mode=true needs torchcsprng"
    )
    # The round's own reason no longer blames min_contributors.
    reason = outcome.summary.rounds[0].reason
    assert "min_contributors" not in reason
    assert reason.startswith("no usable contribution: 3 client(s) failed, 0 refused")


def test_budget_exhausted_mid_run_stops_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each client can afford about one round (2 of 3 sampled per round), so the run
    # stops before round 6; the plan exceeds the budget only as a warning (sampling).
    argv = [
        *SMALL,
        *DP,
        "--set",
        "experiment.rounds=6",
        "--set",
        "experiment.clients_per_round=2",
        "--set",
        "train.local_epochs=1",
        "--set",
        "privacy.budget_epsilon=2.5",
    ]
    code, _, err = fedai(capsys, "simulate", "-q", *argv, "--out", str(tmp_path / "run"))
    assert code == EXIT_FAILED
    failures = [line for line in err if line.startswith("fedai simulate: failed: ")]
    assert len(failures) == 1, err
    assert "stopped after round" in failures[0]
    assert "budget is exhausted" in failures[0]


def test_a_run_without_a_result_still_writes_results_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedai.commands.simulate as command

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ProtocolError("no client answered discovery; every node failed (see log)")

    monkeypatch.setattr(command, "simulate", broken)
    code, _, err = fedai(capsys, "simulate", *SMALL, "--out", str(tmp_path / "run"))
    assert code == EXIT_FAILED
    assert err == [err[0]]
    assert "the run ended without a result: no client answered discovery" in err[0]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["outcome"]["status"] == "failed"
    assert results["rounds"] == []
