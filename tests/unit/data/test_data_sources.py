import importlib.util

import numpy as np
import pytest

from fedai.config import ExperimentConfig
from fedai.data import load_client, load_federated, load_local_file
from fedai.data.hub import load_hub, records_to_arrays
from fedai.data.sources import load_breast_cancer, load_digits, synthetic
from fedai.errors import DataError, PartitionError


def test_digits_and_breast_cancer_shapes():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8)
    assert d.x.min() >= 0.0
    assert d.x.max() <= 1.0
    b = load_breast_cancer()
    assert b.x.shape == (569, 30)
    np.testing.assert_allclose(b.x.mean(axis=0), 0.0, atol=1e-5)


def test_fast_embedded_loaders_equal_sklearn():
    from sklearn.datasets import load_breast_cancer as sk_bc
    from sklearn.datasets import load_digits as sk_digits

    from fedai.data.sources import _breast_cancer_arrays, _digits_arrays

    for ours, theirs in ((_digits_arrays(), sk_digits()), (_breast_cancer_arrays(), sk_bc())):
        np.testing.assert_array_equal(ours[0], theirs.data)
        np.testing.assert_array_equal(ours[1], theirs.target)


def test_synthetic_is_deterministic_and_non_iid():
    xs, ys = synthetic(num_clients=6, alpha=1.0, beta=1.0, seed=4)
    xs2, ys2 = synthetic(num_clients=6, alpha=1.0, beta=1.0, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(xs, xs2, strict=True))
    assert len({len(y) for y in ys}) > 1  # power-law sizes
    dists = [np.bincount(y, minlength=10) / len(y) for y in ys]
    assert max(np.abs(dists[0] - d).sum() for d in dists[1:]) > 0.3  # label skew
    assert all(len(y) >= 50 for y in ys2)


def test_load_federated_every_client_has_train_and_test():
    cfg = ExperimentConfig.from_mapping({"experiment": {"num_clients": 7, "clients_per_round": 3}})
    clients = load_federated(cfg)
    assert len(clients) == 7
    assert all(len(c.y_train) > 0 and len(c.y_test) > 0 for c in clients)
    assert load_client(cfg, 3).y_train.tolist() == clients[3].y_train.tolist()


def test_synthetic_and_breast_cancer_through_config():
    syn = ExperimentConfig.from_mapping(
        {"data": {"dataset": "synthetic"}, "experiment": {"num_clients": 4, "clients_per_round": 4}}
    )
    assert [c.input_shape for c in load_federated(syn)] == [(60,)] * 4
    bc = ExperimentConfig.from_mapping(
        {
            "data": {"dataset": "breast_cancer", "partition": "iid"},
            "experiment": {"num_clients": 3, "clients_per_round": 3},
        }
    )
    assert {c.num_classes for c in load_federated(bc)} == {2}


def test_too_many_clients_is_a_clear_error():
    cfg = ExperimentConfig.from_mapping(
        {
            "data": {"dataset": "breast_cancer", "alpha": 0.01},
            "experiment": {"num_clients": 200, "clients_per_round": 10},
        }
    )
    with pytest.raises(PartitionError, match="fewer than 2 samples"):
        load_federated(cfg)
    with pytest.raises(PartitionError, match=r"partition id must be in \[0, 10\); got 10"):
        load_client(ExperimentConfig(), 10)


def test_csv_source_partitions_and_local_file(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.csv"
    rows = ["f1,f2,label"] + [f"{a:.3f},{b:.3f},{int(a > 0)}" for a, b in rng.normal(size=(60, 2))]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = ExperimentConfig.from_mapping(
        {
            "data": {"dataset": f"csv:{p}", "partition": "iid"},
            "experiment": {"num_clients": 3, "clients_per_round": 3},
        }
    )
    clients = load_federated(cfg)
    assert sum(len(c.y_train) + len(c.y_test) for c in clients) == 60
    local = load_local_file(str(p), client_id="org-a")
    assert local.client_id == "org-a"
    assert len(local.y_train) + len(local.y_test) == 60


def test_hub_records_fixture_and_missing_extra():
    records = [
        {"image": np.full((4, 4), 255, dtype=np.uint8), "label": 3},
        {"image": np.zeros((4, 4), dtype=np.uint8), "label": 1},
    ]
    x, y = records_to_arrays(records, image_key="image", label_key="label")
    assert x.shape == (2, 1, 4, 4)
    assert x.max() == 1.0
    assert y.tolist() == [3, 1]
    rgb = [{"img": np.zeros((5, 5, 3)), "label": 0}]
    assert records_to_arrays(rgb, image_key="img", label_key="label")[0].shape == (1, 3, 5, 5)
    with pytest.raises(DataError, match="must have keys 'image' and 'label'"):
        records_to_arrays([{"pixels": 1}], image_key="image", label_key="label")
    with pytest.raises(DataError, match="must name one of"):
        load_hub("imagenet")


@pytest.mark.skipif(
    importlib.util.find_spec("flwr_datasets") is not None,
    reason="flwr-datasets is installed; the missing-extra path cannot run",
)
def test_hub_without_extra_says_how_to_install():
    with pytest.raises(DataError, match=r"pip install 'fedai\[hub\]'"):
        load_hub("mnist")
