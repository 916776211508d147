import numpy as np
import pytest

from fedai.data.partition import partition
from fedai.errors import PartitionError

LABELS = np.repeat(np.arange(10), 50)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_partition_is_disjoint_complete_and_deterministic(method):
    # Act
    a = partition(LABELS, 8, method=method, alpha=0.5, shards_per_client=2, seed=3, min_samples=2)
    b = partition(LABELS, 8, method=method, alpha=0.5, shards_per_client=2, seed=3, min_samples=2)
    # Assert
    joined = np.concatenate(a)
    assert sorted(joined.tolist()) == list(range(len(LABELS)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_different_seeds_give_different_partitions():
    a = partition(
        LABELS, 5, method="dirichlet", alpha=0.5, shards_per_client=2, seed=0, min_samples=2
    )
    b = partition(
        LABELS, 5, method="dirichlet", alpha=0.5, shards_per_client=2, seed=1, min_samples=2
    )
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_small_alpha_skews_labels():
    skewed = partition(
        LABELS, 5, method="dirichlet", alpha=0.05, shards_per_client=2, seed=0, min_samples=0
    )
    flat = partition(
        LABELS, 5, method="dirichlet", alpha=1000.0, shards_per_client=2, seed=0, min_samples=0
    )

    def classes_held(parts):
        return np.mean([len(np.unique(LABELS[p])) for p in parts if len(p)])

    assert classes_held(skewed) < 6 < classes_held(flat)


def test_shards_give_few_classes_per_client():
    parts = partition(
        LABELS, 10, method="shards", alpha=1.0, shards_per_client=2, seed=0, min_samples=2
    )
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 2


def test_empty_client_is_a_partition_error_naming_the_client():
    with pytest.raises(PartitionError, match=r"leaves client\(s\) \[.*\] with fewer than 2"):
        partition(
            LABELS[:30], 40, method="iid", alpha=1.0, shards_per_client=1, seed=0, min_samples=2
        )


def test_too_many_shards_and_unknown_method():
    with pytest.raises(PartitionError, match="needs at least 200 samples; got 100"):
        partition(
            LABELS[:100],
            100,
            method="shards",
            alpha=1.0,
            shards_per_client=2,
            seed=0,
            min_samples=1,
        )
    with pytest.raises(PartitionError, match="must be iid, dirichlet or shards"):
        partition(LABELS, 2, method="random", alpha=1.0, shards_per_client=2, seed=0, min_samples=1)
