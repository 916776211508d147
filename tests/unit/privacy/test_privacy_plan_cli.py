"""``fedai privacy plan`` / ``ledger`` and the planning functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedai.cli import main
from fedai.config import ExperimentConfig
from fedai.errors import InvalidPrivacyParameterError
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon
from fedai.privacy.ledger import PrivacyLedger
from fedai.privacy.plan import plan_config, plan_sample_level


def _cfg(**privacy: object) -> ExperimentConfig:
    return ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 10},
            "train": {"batch_size": 32, "local_epochs": 1},
            "privacy": {"mode": "local", "delta": 1e-5, **privacy},
        }
    )


def test_per_client_calibration_keeps_every_client_under_target() -> None:
    plans = plan_sample_level(_cfg(target_epsilon=8.0), client_sizes=[55, 300, 1200])
    assert all(p.epsilon <= 8.0 for p in plans)
    # the smallest client (largest q) needs the most noise
    assert plans[0].noise_multiplier > plans[1].noise_multiplier > plans[2].noise_multiplier
    for p in plans:  # and dp-accounting agrees with the plan
        history = [DpSgdEvent(p.noise_multiplier, p.sample_rate, p.steps_per_round * p.rounds)]
        assert dp_accounting_epsilon(history, delta=1e-5) == pytest.approx(p.epsilon, rel=0.01)


def test_shared_sigma_overspends_on_small_clients() -> None:
    plans = plan_sample_level(
        _cfg(noise_multiplier=1.0, budget_epsilon=8.0), client_sizes={"small": 55, "big": 1200}
    )
    small, big = plans
    assert small.epsilon > big.epsilon
    assert small.within_budget is False
    assert big.within_budget is True


def test_plan_matches_a_ledger_fed_the_same_rounds() -> None:
    (p,) = plan_sample_level(_cfg(noise_multiplier=1.1), client_sizes=[200])
    ledger = PrivacyLedger(client_id="0", delta=1e-5)
    for rnd in range(1, p.rounds + 1):
        ledger.record(round=rnd, event=p.event)
    assert ledger.epsilon() == pytest.approx(p.epsilon, rel=1e-6)


def test_bad_sizes_and_mode_none() -> None:
    with pytest.raises(InvalidPrivacyParameterError, match="size"):
        plan_sample_level(_cfg(noise_multiplier=1.0), client_sizes=[0])
    assert plan_config(ExperimentConfig(), client_sizes=[10])["sample_level"] is None


def test_cli_user_level_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "privacy",
            "plan",
            "--population",
            "100",
            "--per-round",
            "10",
            "--sigma",
            "1.0",
            "--rounds",
            "100",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_level"]["epsilon_rdp"] == pytest.approx(7.90, rel=0.01)
    assert out["user_level"]["epsilon_pld"] == pytest.approx(7.05, rel=0.01)


def test_cli_calibrates_user_sigma(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "privacy",
            "plan",
            "--population",
            "100",
            "--per-round",
            "10",
            "--rounds",
            "100",
            "--target-epsilon",
            "4",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)["user_level"]
    assert out["epsilon_rdp"] <= 4.0
    assert out["noise_multiplier"] > 1.0


def test_cli_sample_level_from_config_and_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "dp.toml"
    cfg.write_text(
        '[experiment]\nrounds = 5\n[privacy]\nmode = "local"\ntarget_epsilon = 3.0\ndelta = 1e-5\n',
        encoding="utf-8",
    )
    code = main(["privacy", "plan", "--config", str(cfg), "--client-sizes", "55,300", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    clients = out["sample_level"]["clients"]
    assert [c["num_samples"] for c in clients] == [55, 300]
    assert all(c["epsilon"] <= 3.0 for c in clients)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--population", "100", "--per-round", "10", "--sigma", "1", "--delta", "0"], "delta"),
        (["--population", "100", "--per-round", "10", "--sigma", "-1"], "noise_multiplier"),
        (["--population", "100", "--per-round", "10", "--target-epsilon", "0"], "target_epsilon"),
        (["--set", "privacy.mode=local", "--set", "privacy.target_epsilon=-1"], "target_epsilon"),
        (
            [
                "--set",
                "privacy.mode=local",
                "--set",
                "privacy.noise_multiplier=1",
                "--set",
                "privacy.max_grad_norm=-1",
            ],
            "max_grad_norm",
        ),
        ([], "needs"),
    ],
)
def test_cli_rejects_bad_parameters(
    argv: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["privacy", "plan", *argv])
    assert code in (1, 2)
    assert match in capsys.readouterr().err


def test_cli_ledger_statement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = PrivacyLedger(client_id="7", delta=1e-5)
    ledger.record(round=1, event=DpSgdEvent(1.0, 0.1, 20))
    ledger.save(tmp_path / "l.json")
    assert main(["privacy", "ledger", str(tmp_path / "l.json")]) == 0
    assert "client 7: 1 rounds" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    assert main(["privacy", "ledger", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err


USER_ARGV = ["--population", "100", "--per-round", "10", "--sigma", "1.0", "--rounds", "100"]


def test_cli_user_level_text_states_both_adversaries(capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = main(["privacy", "plan", *USER_ARGV, "--delta", "1e-5"])

    # Assert
    assert code == 0
    out = capsys.readouterr().out
    assert "poisson client sampling" in out
    assert "against outsiders: epsilon 7.90" in out
    assert "participation is secret" in out
    assert "participation known (no amplification): epsilon 19.05" in out
    assert "17.857 (PLD)" in out  # the same client's PLD figure: the audit's 17.9


def test_cli_fixed_sampling_json(capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = main(
        ["privacy", "plan", *USER_ARGV, "--delta", "1e-5", "--client-sampling", "fixed", "--json"]
    )

    # Assert: replace-one, sensitivity 2C; dp-accounting has no PLD for it
    assert code == 0
    user = json.loads(capsys.readouterr().out)["user_level"]
    assert user["client_sampling"] == "fixed"
    assert user["epsilon_rdp"] == pytest.approx(83.9, rel=0.01)
    assert user["epsilon_pld"] is None
    assert "replace one" in user["against_outsiders"]["neighbouring_relation"]
    assert user["participation_known"]["epsilon_rdp"] == pytest.approx(48.8, rel=0.01)


def test_plan_config_uses_the_configs_client_sampling_and_user_delta() -> None:
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"rounds": 10, "num_clients": 50, "clients_per_round": 5},
            "train": {"batch_size": 32, "local_epochs": 1},
            "privacy": {"mode": "local+user", "noise_multiplier": 1.0, "client_sampling": "fixed"},
        }
    )
    user = plan_config(cfg, client_sizes=[100])["user_level"]
    assert user["client_sampling"] == "fixed"
    assert user["delta"] == pytest.approx(1e-5)  # min(1e-5, 1/(10*50))
    assert user["epsilon_pld"] is None
