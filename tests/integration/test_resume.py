"""Checkpoint and resume, end to end: a killed coordinator continues where it stopped.

* ``fedai simulate`` SIGKILLed after round 2 of 4, then the same command with ``--resume``:
  rounds 3 and 4 run, results.json covers rounds 1-4, and the final model is bit for bit
  the model of an uninterrupted run (the loop is deterministic without DP).
* The same with local DP: no client ledger holds a (run, round) twice, every round a
  client trained is charged once, and every reported epsilon is dp-accounting's epsilon of
  the client's whole history (lost rounds included).
* A coordinator that dies inside round 3, after the clients trained and charged it: on
  resume the clients mark round 3 lost, refuse to train it again, and round 4 trains.
* CKKS: the checkpoint holds ciphertexts only, the resumed run's final aggregate decrypts
  (``fedai model decrypt``) to the model ``fedai simulate`` saved, which is the plaintext
  run's model.
* The ``flwr run`` ServerApp (``server.app.main``) resumes from its output directory and
  refuses another config's checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dp_accounting import (
    GaussianDpEvent,
    NeighboringRelation,
    PoissonSampledDpEvent,
    SampledWithoutReplacementDpEvent,
)
from dp_accounting.rdp import RdpAccountant
from flwr.app import Message

import server.app as server_module
from clients.app import app as client_app
from fedai.checkpoint import Checkpoint, FinalAggregate, payload_fingerprint
from fedai.cli import main as cli_main
from fedai.commands.simulate import CLIENT_STATE_DIR, save_simulation, simulate
from fedai.config import ExperimentConfig
from fedai.crypto import create_keys
from fedai.crypto.envelope import MAGIC
from fedai.errors import CheckpointError
from fedai.federation.inprocess import run_inprocess
from fedai.privacy.ledger import PrivacyLedger
from server.checkpointing import start_or_resume

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DP_DIGITS = ROOT / "experiments" / "dp_digits.toml"
SHAPE = {"experiment.rounds": 4, "experiment.num_clients": 3, "experiment.clients_per_round": 3}
FLAGS = [a for k, v in SHAPE.items() for a in ("--set", f"{k}={v}")]
WATCHDOG_SECONDS = 600


class CrashError(Exception):
    """The coordinator 'dies' (raised from inside the round loop)."""


def crash_at(message_type: str, round_: int, direction: str) -> Any:
    """A tap that raises the first time the coordinator sends/receives that message."""

    def tap(seen: str, msg: Message) -> None:
        if (
            seen == direction
            and msg.metadata.message_type == message_type
            and msg.metadata.group_id == str(round_)
        ):
            raise CrashError(f"coordinator killed at {direction} {message_type} of round {round_}")

    return tap


def fedai(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedai.cli", *argv]


def run_and_kill_after(argv: list[str], *, round_: int) -> tuple[int, list[str]]:
    """Run ``fedai argv`` in a subprocess; SIGKILL it once it printed round ``round_``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(fedai(argv), stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    watchdog = threading.Timer(WATCHDOG_SECONDS, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"round {round_:>3}/"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        return proc.wait(timeout=60), lines
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def run_to_end(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedai(argv), capture_output=True, text=True, cwd=ROOT, timeout=WATCHDOG_SECONDS
    )


def same_model(a: Path, b: Path) -> bool:
    x = torch.load(a / "model.pt", weights_only=True)
    y = torch.load(b / "model.pt", weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def rdp_epsilon(history: list[list[float]], delta: float) -> float:
    """Google dp-accounting's RDP epsilon of ``[sigma, q, steps]`` entries."""
    accountant = RdpAccountant()
    for sigma, q, steps in history:
        accountant.compose(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), int(steps))
    return float(accountant.get_epsilon(delta))


def ledgers(out: Path) -> dict[str, PrivacyLedger]:
    found = {p.name: PrivacyLedger.load(p) for p in (out / CLIENT_STATE_DIR).glob("*.json")}
    return {led.client_id: led for led in found.values()}


def dp_config() -> ExperimentConfig:
    return ExperimentConfig.load(DP_DIGITS, [f"{k}={v}" for k, v in SHAPE.items()])


def plain_config(**secure: Any) -> ExperimentConfig:
    overrides = [f"{k}={v}" for k, v in SHAPE.items()]
    overrides += [f"secure_aggregation.{k}={json.dumps(v)}" for k, v in secure.items()]
    return ExperimentConfig.load(None, overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An uninterrupted in-process quickstart run of the same shape."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert cli_main(["simulate", "-q", "--out", str(out), *FLAGS]) == 0
    return out


# ---------------------------------------------------------------------- fedai simulate
def test_sigkill_after_round_2_then_resume_finishes_4_rounds_with_the_same_model(
    tmp_path: Path, uninterrupted: Path
) -> None:
    # Arrange: the run is killed right after it printed round 2
    out = tmp_path / "run"
    argv = ["simulate", "--out", str(out), *FLAGS]
    status, lines = run_and_kill_after(argv, round_=2)
    assert status == -signal.SIGKILL
    assert [line[:11] for line in lines] == ["round   1/4", "round   2/4"]
    ckpt = Checkpoint.find(out)
    assert ckpt is not None
    assert ckpt.round == 2
    assert not (out / "results.json").exists()
    # Act: the same command, resumed
    done = run_to_end([*argv, "--resume"])
    # Assert
    assert done.returncode == 0, done.stderr
    printed = [line[:11] for line in done.stdout.splitlines() if line.startswith("round")]
    assert printed == ["round   3/4", "round   4/4"]
    assert f"resuming run {ckpt.run_id} after round 2" in done.stdout
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((uninterrupted / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
    assert [(r["accuracy"], r["loss"]) for r in results["rounds"]] == [
        (r["accuracy"], r["loss"]) for r in reference["rounds"]
    ]
    assert same_model(out, uninterrupted)
    assert Checkpoint.find(out).round == 4  # type: ignore[union-attr]


def test_a_checkpointed_directory_is_not_overwritten_nor_resumed_under_another_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a run that died in round 3
    out = tmp_path / "run"
    cfg = plain_config()
    with pytest.raises(CrashError):
        simulate(cfg, verbose=False, tap=crash_at("train", 3, "send"), out_dir=out)
    capsys.readouterr()
    # Act
    fresh = cli_main(["simulate", "-q", "--out", str(out), *FLAGS])
    fresh_err = capsys.readouterr().err
    other = cli_main(
        ["simulate", "-q", "--out", str(out), *FLAGS, "--resume", "--set", "train.lr=0.1"]
    )
    other_err = capsys.readouterr().err
    nothing = cli_main(["simulate", "-q", "--out", str(tmp_path / "empty"), "--resume", *FLAGS])
    nothing_err = capsys.readouterr().err
    # Assert
    assert fresh == 2  # bad input, found before anything ran
    assert "--resume" in fresh_err
    assert "round 2 of 4" in fresh_err
    assert other == 2  # bad input, found before anything ran
    assert "train.lr: 0.05 -> 0.1" in other_err
    assert nothing == 2  # bad input, found before anything ran
    assert "--resume needs a checkpoint" in nothing_err
    assert Checkpoint.find(out).round == 2  # type: ignore[union-attr]


# ---------------------------------------------------------------------- privacy
def test_dp_run_killed_after_round_2_charges_no_round_twice(tmp_path: Path) -> None:
    # Arrange
    out = tmp_path / "dp"
    argv = ["simulate", "--config", str(DP_DIGITS), "--out", str(out), *FLAGS]
    status, _ = run_and_kill_after(argv, round_=2)
    assert status == -signal.SIGKILL
    run_id = Checkpoint.find(out).run_id  # type: ignore[union-attr]
    # Act
    done = run_to_end([*argv, "--resume"])
    # Assert
    assert done.returncode == 0, done.stderr
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    books = ledgers(out)
    assert sorted(books) == ["0", "1", "2"]
    for cid, led in books.items():
        charges = [(e.run_id, e.round) for e in led.entries]
        assert len(charges) == len(set(charges)), f"client {cid} charged a round twice"
        assert {e.run_id for e in led.entries} == {run_id}
        assert all(e.round > 2 for e in led.lost)  # only rounds after the resume point
        for r in rounds:  # every round it trained is charged once, and not lost
            if cid in r["trained"]:
                assert led.charge_of(run_id=run_id, round=r["round"]) is not None
                assert not led.charge_of(run_id=run_id, round=r["round"]).lost  # type: ignore[union-attr]
        report = rounds[-1]["privacy"]["clients"][cid]
        assert report["history"] == [list(e.event) for e in led.entries]
        assert report["epsilon"] == pytest.approx(
            rdp_epsilon(report["history"], report["delta"]), rel=0.01
        )


def test_a_round_lost_inside_the_coordinator_is_marked_lost_and_not_charged_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: the coordinator dies in round 3 after every client trained and charged it
    out = tmp_path / "dp"
    cfg = dp_config()
    start_or_resume(out, cfg, resume=False)
    with pytest.raises(CrashError):
        simulate(cfg, verbose=False, tap=crash_at("evaluate", 3, "receive"), out_dir=out)
    run_id = Checkpoint.find(out).run_id  # type: ignore[union-attr]
    before = {cid: [e.round for e in led.entries] for cid, led in ledgers(out).items()}
    # Act
    resume = start_or_resume(out, cfg, resume=True)
    outcome = simulate(cfg, verbose=False, out_dir=out, resume=resume)
    save_simulation(outcome, cfg, out)
    # Assert
    assert before == {"0": [1, 2, 3], "1": [1, 2, 3], "2": [1, 2, 3]}
    rounds = outcome.summary.rounds
    assert [(r.round, r.status) for r in rounds] == [
        (1, "ok"),
        (2, "ok"),
        (3, "failed"),
        (4, "ok"),
    ]
    assert rounds[2].trained == []
    for cid, reason in rounds[2].failures.items():
        assert reason.startswith(f"round 3 of run {run_id} already charged"), (cid, reason)
    for cid, led in ledgers(out).items():
        assert [(e.run_id, e.round, e.lost) for e in led.entries] == [
            (run_id, 1, False),
            (run_id, 2, False),
            (run_id, 3, True),
            (run_id, 4, False),
        ], cid
        report = rounds[-1].privacy["clients"][cid]
        assert report["rounds_lost"] == 1
        assert report["epsilon"] == pytest.approx(led.epsilon())
        assert led.epsilon() == pytest.approx(
            rdp_epsilon([list(e.event) for e in led.entries], led.delta), rel=0.01
        )
    capsys.readouterr()
    assert cli_main(["privacy", "ledger", str(out / CLIENT_STATE_DIR / "ledger-1.json")]) == 0
    shown = capsys.readouterr().out
    assert " lost," in shown  # the round-3 epsilon is flagged in the list
    assert f"lost: run {run_id} round 3" in shown


def test_user_level_accounting_continues_across_a_resume(tmp_path: Path) -> None:
    # Arrange: user-level DP (fixed sampling, 2 of 4), killed as round 3's train goes out
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 4, "num_clients": 4, "clients_per_round": 2},
            "data": {"dataset": "breast_cancer", "partition": "dirichlet", "alpha": 0.5},
            "model": {"name": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
            "privacy": {
                "mode": "local+user",
                "noise_multiplier": 1.0,
                "delta": 1e-5,
                "user_noise_multiplier": 1.2,
                "user_clipping_norm": 1.0,
                "client_sampling": "fixed",
            },
        }
    )
    out = tmp_path / "user"
    with pytest.raises(CrashError):
        simulate(cfg, verbose=False, tap=crash_at("train", 3, "send"), out_dir=out)
    # Act
    resume = start_or_resume(out, cfg, resume=True)
    outcome = simulate(cfg, verbose=False, out_dir=out, resume=resume)
    # Assert: the last figure composes all four rounds, as dp-accounting computes it
    rounds = outcome.summary.rounds
    assert [r.round for r in rounds] == [1, 2, 3, 4]
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    for record in rounds:
        h = record.privacy["user_level"]["round"]
        accountant.compose(
            SampledWithoutReplacementDpEvent(
                h["population"], h["sampled"], GaussianDpEvent(h["noise_multiplier"] / 2.0)
            )
        )
    final = rounds[-1].privacy["user_level"]
    assert final["epsilon"] == pytest.approx(float(accountant.get_epsilon(1e-5)), rel=0.01)
    assert final["epsilon"] > rounds[1].privacy["user_level"]["epsilon"]


# ---------------------------------------------------------------------- CKKS
def test_ckks_resume_keeps_ciphertexts_and_decrypts_to_the_plaintext_model(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange: a CKKS run that dies when round 3's train messages go out
    keys_dir = tmp_path / "keys"
    bundle = create_keys(keys_dir)
    cfg = plain_config(scheme="ckks", key_dir=str(keys_dir))
    out = tmp_path / "ckks"
    with pytest.raises(CrashError):
        simulate(cfg, verbose=False, tap=crash_at("train", 3, "send"), out_dir=out)
    ckpt = Checkpoint.find(out)
    assert ckpt is not None
    assert ckpt.round == 2
    assert ckpt.model is not None
    # Act
    outcome = simulate(
        cfg, verbose=False, out_dir=out, resume=start_or_resume(out, cfg, resume=True)
    )
    save_simulation(outcome, cfg, out)
    capsys.readouterr()
    status = cli_main(
        ["model", "decrypt", str(out), "--keys", str(keys_dir), "--out", str(tmp_path / "dec")]
    )
    printed = capsys.readouterr().out
    # Assert: the coordinator kept ciphertext envelopes only, under the run's key set
    assert all(a.dtype == np.uint8 for a in ckpt.model)
    assert ckpt.model[0][: len(MAGIC)].tobytes() == MAGIC
    assert ckpt.key_fingerprint == payload_fingerprint(ckpt.model) == bundle.fingerprint.hex()
    aggregate = FinalAggregate.load(out)
    assert aggregate.scheme == "ckks"
    assert aggregate.payload[0][: len(MAGIC)].tobytes() == MAGIC
    assert [r.round for r in outcome.summary.rounds] == [1, 2, 3, 4]
    assert status == 0
    assert f"run {ckpt.run_id} (round 4, ckks)" in printed
    assert same_model(tmp_path / "dec", out)
    assert same_model(out, uninterrupted)


# ---------------------------------------------------------------------- flwr run ServerApp
def test_the_flwr_serverapp_resumes_from_its_output_dir(
    tmp_path: Path, uninterrupted: Path
) -> None:
    # Arrange: the ServerApp under `flwr run` reads everything from run_config
    out = tmp_path / "flwr"
    run_config: dict[str, bool | int | float | str] = {**SHAPE, "output.dir": str(out)}
    with pytest.raises(CrashError):
        run_inprocess(
            server_module.app,
            client_app,
            num_supernodes=3,
            run_config=run_config,
            tap=crash_at("evaluate", 3, "send"),
        )
    run_id = Checkpoint.find(out).run_id  # type: ignore[union-attr]
    # Act: the same run again
    run_inprocess(server_module.app, client_app, num_supernodes=3, run_config=run_config)
    # Assert
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]
    assert Checkpoint.find(out).run_id == run_id  # type: ignore[union-attr]
    assert FinalAggregate.load(out).run_id == run_id
    assert same_model(out, uninterrupted)
    with pytest.raises(CheckpointError, match=r"experiment\.seed: 0 -> 1"):
        run_inprocess(
            server_module.app,
            client_app,
            num_supernodes=3,
            run_config={**run_config, "experiment.seed": 1},
        )
