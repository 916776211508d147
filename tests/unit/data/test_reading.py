"""A real node's own reading of its file: settings, the keyed split, the split key's source."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import numpy as np
import pytest

from fedai.data import NodeReading, load_local_file
from fedai.data.reading import SPLIT_KEY_FILE, keyed_permutation, split_key
from fedai.errors import ConfigError, DataError
from fedai.policy import NodePolicy
from fedai.release import EvaluationRelease, noisy_metrics


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["a,b,age,label"] + [
        f"{rng.normal():.4f},{rng.normal():.4f},{rng.integers(18, 90)},{i % 3}" for i in range(100)
    ]
    path = tmp_path / "site.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_settings_come_from_node_config_with_fedais_defaults() -> None:
    default = NodeReading.from_node_config({})
    own = NodeReading.from_node_config(
        {"label-column": "y", "test-fraction": "0.3", "min-test-examples": "5", "num-classes": 4}
    )

    assert default == NodeReading()
    assert (own.label_column, own.test_fraction, own.min_test_examples, own.num_classes) == (
        "y",
        0.3,
        5,
        4,
    )


def test_bad_settings_are_refused_all_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        NodeReading.from_node_config(
            {"test-fraction": "1e-9x", "standardize": "minmax", "min-test-examples": "0"}
        )
    assert len(err.value.problems) == 3
    assert "test-fraction must be a number in (0, 1)" in str(err.value)


def test_the_node_policy_carries_and_validates_them() -> None:
    with pytest.raises(ConfigError, match="evaluation must be 'dp' or 'off'"):
        NodePolicy.from_node_config({"require-privacy": "local", "evaluation": "clear"})
    policy = NodePolicy.from_node_config({"require-privacy": "local", "label-column": "y"})
    assert policy.reading.label_column == "y"
    assert policy.evaluation.mode == "dp"  # the default where the node requires DP
    assert NodePolicy.from_node_config({}).evaluation.mode == "clear"


def test_the_test_split_holds_at_least_the_minimum(csv_path: Path) -> None:
    data = load_local_file(str(csv_path), client_id="s", reading=NodeReading(test_fraction=0.01))
    assert len(data.y_test) == 20
    assert len(data.y_train) == 80
    with pytest.raises(DataError, match="must hold at least 101 rows"):
        load_local_file(str(csv_path), client_id="s", reading=NodeReading(min_test_examples=100))


def test_the_split_depends_on_the_key_only(csv_path: Path, tmp_path: Path) -> None:
    by_file = load_local_file(str(csv_path), client_id="s")
    again = load_local_file(str(csv_path), client_id="other-id")
    seeded = load_local_file(str(csv_path), client_id="s", reading=NodeReading(split_seed="x"))

    np.testing.assert_array_equal(by_file.x_test, again.x_test)  # stable without a state dir
    assert not np.array_equal(by_file.x_test, seeded.x_test)


def test_the_state_dir_key_is_random_private_and_kept(csv_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = split_key(split_seed=None, state_dir=str(state), data_path=str(csv_path))
    second = split_key(split_seed=None, state_dir=str(state), data_path=str(csv_path))
    other = split_key(split_seed=None, state_dir=str(tmp_path / "s2"), data_path=str(csv_path))

    assert first == second
    assert first != other
    assert stat.S_IMODE((state / SPLIT_KEY_FILE).stat().st_mode) == 0o600
    (state / SPLIT_KEY_FILE).write_bytes(b"short")
    with pytest.raises(DataError, match="must hold 32 bytes; got 5"):
        split_key(split_seed=None, state_dir=str(state), data_path=str(csv_path))


def test_a_keyed_permutation_is_a_permutation_and_differs_by_key() -> None:
    a, b = keyed_permutation(500, b"k1"), keyed_permutation(500, b"k2")
    assert sorted(a.tolist()) == list(range(500))
    assert not np.array_equal(a, b)


def test_the_label_column_and_classes_are_the_nodes(csv_path: Path) -> None:
    data = load_local_file(str(csv_path), client_id="s")
    assert data.num_classes == 3
    with pytest.raises(DataError, match=r"labels must be < 2 \(num-classes\)"):
        load_local_file(str(csv_path), client_id="s", reading=NodeReading(num_classes=2))


def test_noisy_metrics_have_the_stated_noise_and_stay_in_range() -> None:
    release = EvaluationRelease(mode="dp", noise_multiplier=2.0, loss_bound=5.0)
    rng = random.Random(0)
    draws = np.array(
        [
            noisy_metrics(loss_sum=50.0, correct=40.0, num_examples=100, release=release, rng=rng)
            for _ in range(4000)
        ]
    )
    assert np.all((draws[:, 0] >= 0) & (draws[:, 0] <= 5.0))
    assert np.all((draws[:, 1] >= 0) & (draws[:, 1] <= 1.0))
    # accuracy noise: std z * sqrt(2) / n = 0.0283; loss noise: L times that = 0.141
    assert np.std(draws[:, 1]) == pytest.approx(2.0 * np.sqrt(2) / 100, rel=0.05)
    assert np.std(draws[:, 0]) == pytest.approx(5.0 * 2.0 * np.sqrt(2) / 100, rel=0.05)
    assert np.mean(draws[:, 1]) == pytest.approx(0.4, abs=0.005)
    assert release.event() == (2.0, 1.0, 1)
