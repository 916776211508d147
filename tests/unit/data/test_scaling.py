"""Per-client standardisation: statistics from the training split only (fedai.data.scaling)."""

import numpy as np
import pytest

from fedai.config import DataSection, ExperimentConfig
from fedai.data import NodeReading, load_federated, load_local_file, split_train_test
from fedai.data.scaling import Standardizer, fit, resolve
from fedai.errors import ConfigError, DataError


def raw_and_scaled(x, y, **kwargs):
    """The same split without and with standardisation."""
    common = {"test_fraction": 0.25, "seed": 3, "num_classes": 2, **kwargs}
    return split_train_test("c", x, y, **common), split_train_test(
        "c", x, y, standardize=True, **common
    )


def write_csv(path, x, y):
    header = ",".join(f"f{j}" for j in range(x.shape[1])) + ",label"
    rows = [
        ",".join(repr(float(v)) for v in row) + f",{int(t)}" for row, t in zip(x, y, strict=True)
    ]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_statistics_come_from_the_training_split_only():
    # Arrange: large-scale features; test rows will be shifted far away afterwards
    rng = np.random.default_rng(0)
    x = rng.normal([1000.0, -5.0, 0.01], [300.0, 2.0, 0.002], size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    raw, _ = raw_and_scaled(x, y)
    test_rows = [i for i in range(40) if any(np.array_equal(x[i], r) for r in raw.x_test)]
    assert len(test_rows) == len(raw.x_test)
    shifted = x.copy()
    shifted[test_rows] += 1e6  # only the test split changes

    # Act
    _, scaled = raw_and_scaled(x, y)
    _, scaled_shifted = raw_and_scaled(shifted, y)

    # Assert: train split is z-scored by its own mean/std, computed independently here
    x_tr = raw.x_train.astype(np.float64)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    np.testing.assert_allclose(scaled.x_train, (x_tr - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled.x_train.std(axis=0), 1.0, atol=1e-5)
    # moving every test row leaves the training split (and so the statistics) unchanged
    np.testing.assert_array_equal(scaled_shifted.x_train, scaled.x_train)
    assert scaled.x_train.dtype == np.float32
    np.testing.assert_array_equal(scaled.y_train, raw.y_train)


def test_test_split_uses_the_training_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(50.0, 10.0, size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 2

    raw, scaled = raw_and_scaled(x, y)

    x_tr = raw.x_train.astype(np.float64)
    expected = (raw.x_test.astype(np.float64) - x_tr.mean(axis=0)) / x_tr.std(axis=0)
    np.testing.assert_allclose(scaled.x_test, expected, rtol=1e-5, atol=1e-5)
    # and not the test split's own statistics
    own = (raw.x_test - raw.x_test.mean(axis=0)) / raw.x_test.std(axis=0)
    assert not np.allclose(scaled.x_test, own, atol=1e-3)


def test_a_constant_training_column_is_centred_not_divided_by_zero():
    x = np.array([[7.0, 1.0], [7.0, 2.0], [7.0, 3.0], [7.0, 4.0], [9.0, 5.0]], dtype=np.float32)

    scaler = fit(x[:4])
    out = scaler.transform(x)

    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(scaler.scale[0], 1.0)
    np.testing.assert_array_equal(out[:4, 0], 0.0)
    np.testing.assert_array_equal(out[4, 0], 2.0)  # a test value off the constant: centred only
    np.testing.assert_allclose(out[:4, 1], (x[:4, 1] - 2.5) / np.std([1.0, 2.0, 3.0, 4.0]))


def test_a_single_training_sample_gives_finite_features():
    x = np.array([[3.0, -2.0], [4.0, 0.0]], dtype=np.float32)
    out = fit(x[:1]).transform(x)
    np.testing.assert_array_equal(out, [[0.0, 0.0], [1.0, 2.0]])


def test_image_features_get_per_pixel_statistics_and_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, size=(12, 1, 3, 3)).astype(np.float32)
    before = x.copy()

    scaler = fit(x)
    out = scaler.transform(x)

    assert scaler.mean.shape == (1, 3, 3)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(DataError, match=r"sample shape \(1, 3, 3\); got \(9,\)"):
        scaler.transform(x.reshape(12, 9))
    with pytest.raises(DataError, match="at least one training sample; got 0"):
        fit(x[:0])


def test_standardizer_is_a_plain_affine_map():
    s = Standardizer(mean=np.array([1.0, 2.0]), scale=np.array([2.0, 4.0]))
    np.testing.assert_array_equal(s.transform(np.array([[3.0, 10.0]])), [[1.0, 2.0]])


@pytest.mark.parametrize(
    ("mode", "file_source", "expected"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("zscore", False, True),
        ("zscore", True, True),
        ("none", True, False),
        ("none", False, False),
    ],
)
def test_resolve(mode, file_source, expected):
    assert resolve(mode, file_source=file_source) is expected


def test_resolve_and_config_refuse_unknown_modes():
    with pytest.raises(
        ConfigError, match=r"data.standardize must be one of auto, none, zscore; got 'minmax'"
    ):
        resolve("minmax", file_source=True)
    with pytest.raises(
        ConfigError, match=r"data.standardize must be one of 'auto', 'none', 'zscore'; got 'minmax'"
    ):
        ExperimentConfig.from_mapping({"data": {"standardize": "minmax"}})
    with pytest.raises(ConfigError, match=r"data.standardize must be one of 'auto', 'none'"):
        ExperimentConfig(data=DataSection(standardize="minmax"))  # type: ignore[arg-type]


def test_cli_rejects_an_unknown_mode_with_exit_2(capsys):
    from fedai.cli import main

    code = main(["simulate", "--set", "data.standardize=minmax"])

    assert code == 2
    err = capsys.readouterr().err
    assert "data.standardize must be one of 'auto', 'none', 'zscore'; got 'minmax'" in err


# ---------------------------------------------------------------------- through the loaders
@pytest.fixture
def big_csv(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal([2000.0, 0.05, -300.0], [500.0, 0.01, 40.0], size=(90, 3))
    y = (x[:, 0] > 2000.0).astype(int)
    return write_csv(tmp_path / "big.csv", x, y), x.astype(np.float32)


def csv_config(path, **data):
    return ExperimentConfig.from_mapping(
        {
            "data": {"dataset": f"csv:{path}", "partition": "iid", **data},
            "experiment": {"num_clients": 3, "clients_per_round": 3},
        }
    )


def test_file_sources_are_standardised_with_own_statistics_without_declared_bounds(big_csv):
    path, _ = big_csv

    clients = load_federated(csv_config(path))

    # data.statistics "auto" without data.feature_bounds: local (no bound on one node's pull)
    assert all(abs(float(c.x_train[:, 0].mean())) < 1e-5 for c in clients)


def test_file_sources_are_standardised_with_pooled_statistics_when_federated(big_csv):
    path, _ = big_csv
    wide = {"statistics": "federated", "feature_bounds": "[-10000, 10000]"}  # clips nothing

    clients = load_federated(csv_config(path, **wide))
    raw = load_federated(csv_config(path, standardize="none"))

    # every client's training split pooled
    x_all = np.concatenate([c.x_train for c in raw]).astype(np.float64)
    mean, std = x_all.mean(axis=0), x_all.std(axis=0)
    for scaled, plain in zip(clients, raw, strict=True):
        np.testing.assert_allclose(scaled.x_train, (plain.x_train - mean) / std, atol=1e-5)
        np.testing.assert_allclose(scaled.x_test, (plain.x_test - mean) / std, atol=1e-4)
    assert len({round(float(c.x_train[:, 0].mean()), 3) for c in clients}) == 3


def test_file_sources_are_standardised_per_client_with_local_statistics(big_csv):
    path, _ = big_csv

    clients = load_federated(csv_config(path, statistics="local"))
    raw = load_federated(csv_config(path, standardize="none"))

    for scaled, plain in zip(clients, raw, strict=True):
        x_tr = plain.x_train.astype(np.float64)
        mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
        np.testing.assert_allclose(scaled.x_train, (x_tr - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scaled.x_test, (plain.x_test - mean) / std, rtol=1e-5, atol=1e-4)
    # each client used its own statistics: the raw means differ, the scaled ones are all 0
    assert len({round(float(c.x_train[:, 0].mean()), 3) for c in raw}) == 3
    assert all(abs(float(c.x_train[:, 0].mean())) < 1e-5 for c in clients)


def test_none_leaves_file_data_untouched(big_csv):
    path, x = big_csv

    clients = load_federated(csv_config(path, standardize="none"))

    rows = np.concatenate([np.concatenate([c.x_train, c.x_test]) for c in clients])
    assert rows.dtype == np.float32
    order = np.lexsort(rows.T)
    np.testing.assert_array_equal(rows[order], x[np.lexsort(x.T)])


def test_a_real_nodes_file_follows_the_same_rule(big_csv):
    path, x = big_csv
    auto = load_local_file(str(path), client_id="org-a")  # the node's default: "auto"
    off = load_local_file(str(path), client_id="org-a", reading=NodeReading(standardize="none"))

    x_tr = off.x_train.astype(np.float64)
    np.testing.assert_allclose(auto.x_train, (x_tr - x_tr.mean(0)) / x_tr.std(0), atol=1e-5)
    np.testing.assert_allclose(
        auto.x_test, (off.x_test - x_tr.mean(0)) / x_tr.std(0), rtol=1e-5, atol=1e-4
    )
    assert np.isin(off.x_train[:, 0], x[:, 0]).all()  # "none": the file's own values


def test_npz_sources_are_standardised_too(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 5000, size=(40, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=x, y=np.arange(40) % 2)
    cfg = ExperimentConfig.from_mapping(
        {
            "data": {"dataset": f"npz:{tmp_path / 'd.npz'}", "partition": "iid"},
            "experiment": {"num_clients": 2, "clients_per_round": 2},
        }
    )

    clients = load_federated(cfg)

    # all training rows centred and scaled (local statistics: the default without bounds)
    rows = np.concatenate([c.x_train for c in clients]).astype(np.float64)
    assert np.abs(rows.mean(axis=0)).max() < 1e-4
    np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer", "synthetic"])
def test_built_in_sets_are_left_alone_by_auto(dataset):
    def cfg(mode):
        data = {"dataset": dataset, "standardize": mode}
        if dataset != "synthetic":
            data["partition"] = "iid"
        return ExperimentConfig.from_mapping(
            {"data": data, "experiment": {"num_clients": 2, "clients_per_round": 2}}
        )

    auto, off, on = (load_federated(cfg(m))[0] for m in ("auto", "none", "zscore"))

    np.testing.assert_array_equal(auto.x_train, off.x_train)
    np.testing.assert_array_equal(auto.x_test, off.x_test)
    assert not np.array_equal(on.x_train, off.x_train)  # "zscore" applies to every source
