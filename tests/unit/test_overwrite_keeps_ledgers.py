"""``--overwrite`` replaces a run but keeps the clients' ledgers; resetting them is explicit.

The simulated clients' ledgers (``client-state/``) record privacy really spent: a new run
over an old one continues them, as real nodes would. Only ``--reset-client-ledgers``
(with ``--overwrite``) removes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedai.checkpoint import CHECKPOINT_DIR
from fedai.cli import main as cli_main
from fedai.commands.simulate import CLIENT_STATE_DIR
from fedai.config import ExperimentConfig
from fedai.errors import EXIT_USAGE, CheckpointError
from server.checkpointing import start_or_resume


def earlier_run(root: Path) -> tuple[Path, Path]:
    (root / CHECKPOINT_DIR).mkdir(parents=True)
    (root / CHECKPOINT_DIR / "checkpoint.npz").write_bytes(b"old")
    ledger = root / CLIENT_STATE_DIR / "ledger-3.json"
    ledger.parent.mkdir()
    ledger.write_text("{}")
    return root / CHECKPOINT_DIR, ledger


def test_overwrite_removes_the_checkpoint_and_keeps_the_ledgers(tmp_path: Path) -> None:
    checkpoint, ledger = earlier_run(tmp_path)
    out = start_or_resume(
        tmp_path, ExperimentConfig(), resume=False, overwrite=True, state_dirs=(CLIENT_STATE_DIR,)
    )
    assert out is None
    assert not checkpoint.exists()
    assert ledger.read_text() == "{}"


def test_reset_state_with_overwrite_removes_the_ledgers_too(tmp_path: Path) -> None:
    checkpoint, ledger = earlier_run(tmp_path)
    start_or_resume(
        tmp_path,
        ExperimentConfig(),
        resume=False,
        overwrite=True,
        state_dirs=(CLIENT_STATE_DIR,),
        reset_state=True,
    )
    assert not checkpoint.exists()
    assert not ledger.parent.exists()


@pytest.mark.parametrize(("overwrite", "resume"), [(False, False), (False, True), (True, True)])
def test_reset_state_needs_overwrite_and_no_resume(
    tmp_path: Path, overwrite: bool, resume: bool
) -> None:
    _, ledger = earlier_run(tmp_path)
    with pytest.raises(CheckpointError, match="resetting the clients' ledgers needs"):
        start_or_resume(
            tmp_path,
            ExperimentConfig(),
            resume=resume,
            overwrite=overwrite,
            state_dirs=(CLIENT_STATE_DIR,),
            reset_state=True,
        )
    assert ledger.exists()


def test_the_cli_flag_is_documented_and_needs_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ledger = earlier_run(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(["simulate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--reset-client-ledgers" in shown
    assert f"ledgers in DIR/{CLIENT_STATE_DIR}/ are kept" in shown
    assert "by the operator's explicit choice" in shown
    code = cli_main(["simulate", "-q", "--out", str(tmp_path), "--reset-client-ledgers"])
    assert code == EXIT_USAGE
    assert "--reset-client-ledgers applies only with --overwrite" in capsys.readouterr().err
    assert ledger.exists()
