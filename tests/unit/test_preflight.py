"""fedai.preflight: the checks ``fedai simulate`` makes once, before any client starts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fedai.config import ExperimentConfig
from fedai.crypto import CLIENT_BUNDLE, COORDINATOR_BUNDLE, create_keys
from fedai.errors import (
    ConfigError,
    DataError,
    InvalidPrivacyParameterError,
    KeyFileError,
    PartitionError,
)
from fedai.preflight import (
    check_budget,
    check_keys,
    check_output_dir,
    check_output_file,
    check_run,
    prepare_output_dir,
)
from fedai.privacy.accounting import DpSgdEvent, dp_accounting_epsilon


def cfg_of(**sections: dict[str, Any]) -> ExperimentConfig:
    base: dict[str, dict[str, Any]] = {
        "experiment": {"rounds": 2, "num_clients": 3, "clients_per_round": 3},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return ExperimentConfig.from_mapping(base)


# ---------------------------------------------------------------------- output directory
def test_output_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"--out '.*afile/sub' cannot be created: .* is a file"):
        check_output_dir(tmp_path / "afile" / "sub")


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="must be a directory; got the file"):
        check_output_dir(tmp_path / "afile")


def test_earlier_run_needs_overwrite_or_resume(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="must not hold an earlier run unless --overwrite"):
        check_output_dir(tmp_path)
    check_output_dir(tmp_path, overwrite=True)
    check_output_dir(tmp_path, resume=True)


def test_new_nested_output_dir_passes_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    check_output_dir(target)
    assert not (tmp_path / "a").exists()


def test_prepare_creates_and_overwrite_removes_only_run_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_output_dir(run)
    assert run.is_dir()
    for name in ("results.json", "rounds.csv", "accuracy.png", "accuracy_vs_epsilon.png"):
        (run / name).write_text("old")
    (run / "model.pt").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    (run / "sub").mkdir()
    prepare_output_dir(run)  # without overwrite nothing is removed
    assert (run / "accuracy_vs_epsilon.png").exists()
    prepare_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "sub"]


def test_prepare_reports_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="must be a writable directory"):
        prepare_output_dir(tmp_path / "afile" / "sub")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_prepare_refuses_proc() -> None:
    with pytest.raises(ConfigError, match=r"'/proc/x'"):
        prepare_output_dir(Path("/proc/x"))


def test_output_file_checks(tmp_path: Path) -> None:
    check_output_file(tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    with pytest.raises(ConfigError, match="must be a file path"):
        check_output_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist or is not a directory"):
        check_output_file(tmp_path / "missing" / "report.json")


# ---------------------------------------------------------------------- keys
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("keys_a"), tmp_path_factory.mktemp("keys_b")
    create_keys(a)
    create_keys(b)
    return a, b


def ckks(key_dir: Path) -> ExperimentConfig:
    return cfg_of(secure_aggregation={"scheme": "ckks", "key_dir": str(key_dir)})


def test_matching_key_set_passes(keys: tuple[Path, Path]) -> None:
    check_keys(ckks(keys[0]).secure_aggregation)


def test_swapped_bundle_is_found(keys: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / CLIENT_BUNDLE).write_bytes((keys[0] / CLIENT_BUNDLE).read_bytes())
    (tmp_path / COORDINATOR_BUNDLE).write_bytes((keys[1] / COORDINATOR_BUNDLE).read_bytes())
    with pytest.raises(KeyFileError, match="must come from one key set; got fingerprints"):
        check_keys(ckks(tmp_path).secure_aggregation)


def test_edited_mac_key_is_found(keys: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / CLIENT_BUNDLE).write_bytes((keys[0] / CLIENT_BUNDLE).read_bytes())
    data = (keys[0] / COORDINATOR_BUNDLE).read_bytes()
    at = data.index(b'"mac_key": "') + len(b'"mac_key": "')
    flipped = b"0" if data[at : at + 1] != b"0" else b"1"
    (tmp_path / COORDINATOR_BUNDLE).write_bytes(data[:at] + flipped + data[at + 1 :])
    with pytest.raises(KeyFileError, match="same payload-authentication key"):
        check_keys(ckks(tmp_path).secure_aggregation)


def test_missing_bundle_is_found(keys: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / CLIENT_BUNDLE).write_bytes((keys[0] / CLIENT_BUNDLE).read_bytes())
    with pytest.raises(KeyFileError, match=COORDINATOR_BUNDLE):
        check_keys(ckks(tmp_path).secure_aggregation)


# ---------------------------------------------------------------------- privacy budget
def independent_epsilon(*, n: int, batch: int, sigma: float, rounds: int, delta: float) -> float:
    """Google dp-accounting RDP for ``rounds`` rounds of one epoch at q = 1/ceil(n/B)."""
    batches = math.ceil(n / batch)
    event = DpSgdEvent(sigma, 1.0 / batches, batches * rounds)
    return dp_accounting_epsilon([event], delta=delta, accountant="rdp")


def dp_cfg(*, budget: float, clients_per_round: int = 3) -> ExperimentConfig:
    return cfg_of(
        experiment={"rounds": 5, "clients_per_round": clients_per_round},
        train={"batch_size": 16, "local_epochs": 1},
        privacy={
            "mode": "local",
            "noise_multiplier": 1.0,
            "delta": 1e-5,
            "budget_epsilon": budget,
        },
    )


N = 200  # every client's training-set size in these tests


def test_budget_below_one_round_is_refused() -> None:
    one = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=1, delta=1e-5)
    with pytest.raises(InvalidPrivacyParameterError, match="could never train"):
        check_budget(dp_cfg(budget=0.9 * one), [N, N, N])


def test_budget_below_the_plan_with_full_participation_is_refused() -> None:
    one = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=1, delta=1e-5)
    five = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=5, delta=1e-5)
    budget = (one + five) / 2
    with pytest.raises(InvalidPrivacyParameterError, match="the run would stop early") as info:
        check_budget(dp_cfg(budget=budget), [N, N, N])
    stated = float(str(info.value).split("below the epsilon ")[1].split()[0])
    assert stated == pytest.approx(five, rel=0.05)  # Opacus' RDP vs Google's RDP


def test_budget_below_the_plan_with_sampling_only_warns() -> None:
    one = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=1, delta=1e-5)
    five = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=5, delta=1e-5)
    warnings = check_budget(dp_cfg(budget=(one + five) / 2, clients_per_round=2), [N, N, N])
    assert len(warnings) == 1
    assert "may stop early" in warnings[0]


def test_budget_above_the_plan_passes() -> None:
    five = independent_epsilon(n=N, batch=16, sigma=1.0, rounds=5, delta=1e-5)
    assert check_budget(dp_cfg(budget=1.1 * five), [N, N, N]) == []


def test_target_epsilon_above_budget_is_refused() -> None:
    cfg = cfg_of(
        experiment={"rounds": 1},
        privacy={"mode": "local", "target_epsilon": 8.0, "budget_epsilon": 1.0},
    )
    with pytest.raises(InvalidPrivacyParameterError, match="budget_epsilon"):
        check_budget(cfg, [N, N, N])


# ---------------------------------------------------------------------- whole run
def test_too_many_clients_is_one_partition_error() -> None:
    cfg = cfg_of(experiment={"num_clients": 2000, "clients_per_round": 10})
    with pytest.raises(PartitionError, match="over 2000 clients leaves client"):
        check_run(cfg)


def test_missing_csv_is_one_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        check_run(cfg_of(data={"dataset": f"csv:{tmp_path / 'missing.csv'}"}))


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = cfg_of(experiment={"num_clients": 2000, "clients_per_round": 10})
    with pytest.raises(ConfigError) as info:
        check_run(cfg, out_dir=tmp_path / "afile" / "sub")
    assert len(info.value.problems) == 2
    assert "\n" not in str(info.value)


def test_min_contributors_above_the_round_is_refused() -> None:
    cfg = cfg_of(secure_aggregation={"min_contributors": 4})
    with pytest.raises(ConfigError, match=r"min_contributors must be <= experiment\.clients_per"):
        check_run(cfg)


def test_secure_mode_without_torchcsprng_is_refused() -> None:
    from fedai.privacy.dpsgd import secure_rng_available

    if secure_rng_available():
        pytest.skip("torchcsprng is installed here")
    cfg = cfg_of(privacy={"mode": "local", "noise_multiplier": 1.0, "secure_mode": True})
    with pytest.raises(InvalidPrivacyParameterError, match="secure_mode = true needs"):
        check_run(cfg)


def test_a_good_config_passes_and_reports_sizes(tmp_path: Path) -> None:
    found = check_run(cfg_of(), out_dir=tmp_path / "run")
    assert sorted(found.client_sizes) == ["0", "1", "2"]
    assert all(n > 0 for n in found.client_sizes.values())
    assert not (tmp_path / "run").exists()


def test_grad_sample_mode_without_dp_is_a_warning() -> None:
    found = check_run(cfg_of(privacy={"grad_sample_mode": "ew"}))
    assert any("grad_sample_mode" in w for w in found.warnings)


def test_data_statistics_without_a_standardised_source_is_warned_about() -> None:
    # digits is a built-in set: data.standardize "auto" leaves it as it is in a simulation
    cfg = ExperimentConfig.from_mapping(
        {
            "experiment": {"num_clients": 2, "clients_per_round": 2, "rounds": 1},
            "data": {"dataset": "digits", "partition": "iid", "statistics": "local"},
        }
    )

    findings = check_run(cfg)

    (warning,) = [w for w in findings.warnings if "data.statistics" in w]
    assert "has no effect" in warning
    assert "'digits'" in warning
