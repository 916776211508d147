"""Bounded federated statistics: one node's pull on the pooled moments (fedai.data.scaling).

The moments are those of features clipped to public bounds and mapped to [0, 1]; the
checks are the mean within the bounds and Bhatia & Davis (2000)'s variance bound.
"""

import json

import numpy as np
import pytest

from fedai.aggregation import PlainCodec
from fedai.config import DataSection, ExperimentConfig
from fedai.data import scaling
from fedai.errors import ConfigError, CorruptPayloadError

STEP = 1e-6
BOUNDS = scaling.FeatureBounds(((0.0, 10.0), (-5.0, 5.0), (100.0, 3000.0)))


def honest_splits(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    centre, spread = np.array([3.0, 0.5, 700.0]), np.array([1.0, 2.0, 300.0])
    return [
        rng.normal(centre + shift * spread, spread, size=(n, 3))
        for n, shift in ((40, -1.0), (25, 0.0), (60, 1.0), (15, 0.5))
    ]


def pool(moments: list[scaling.Moments], bounds: scaling.FeatureBounds = BOUNDS):
    """What every node derives from these moments, summed as the coordinator sums them."""
    codec = PlainCodec(bound=1.0, round_decimals=6, float64=True)
    payloads = [codec.encode([scaling.share(m, step=STEP)], m.count) for m in moments]
    summed = [sum(p[0] for p in payloads)]
    total = sum(m.count for m in moments)
    d = len(moments[0].mean)
    (average,) = codec.decode(summed, total, scaling.shapes_of(d, step=STEP))
    return scaling.pooled(
        average,
        total_count=total,
        own_count=moments[0].count,
        sample_shape=(d,),
        step=STEP,
        bounds=bounds,
    )


# ---------------------------------------------------------------- the bound math
def test_moments_are_those_of_the_clipped_features_mapped_to_the_unit_interval():
    x = np.array([[-1.0, 0.0, 50.0], [5.0, 5.0, 3000.0], [20.0, -9.0, 1550.0]])

    m = scaling.moments(x, bounds=BOUNDS)

    u = np.array([[0.0, 0.5, 0.0], [0.5, 1.0, 1.0], [1.0, 0.0, 0.5]])  # by hand
    np.testing.assert_allclose(m.mean, u.mean(axis=0))
    np.testing.assert_allclose(m.mean_square, (u**2).mean(axis=0))
    assert m.count == 3


def test_pooled_statistics_are_numpys_on_the_clipped_concatenation():
    splits = honest_splits()

    scaler = pool([scaling.moments(x, bounds=BOUNDS) for x in splits])

    low, high = BOUNDS.arrays(3)
    rows = np.clip(np.concatenate(splits), low, high)
    np.testing.assert_allclose(scaler.mean, rows.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scaler.scale, rows.std(axis=0), rtol=1e-6)
    # and the standardiser clips as the moments did
    probe = np.array([[-100.0, 100.0, 1e6]])
    clipped = np.array([[0.0, 5.0, 3000.0]])
    np.testing.assert_allclose(
        scaler.transform(probe), (clipped - rows.mean(0)) / rows.std(0), rtol=1e-5
    )
    reference = scaling.fit(np.concatenate(splits), bounds=BOUNDS)
    np.testing.assert_allclose(scaler.transform(probe), reference.transform(probe), rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_one_node_moves_each_pooled_mean_by_at_most_its_weight_share_of_the_range(seed):
    # Arrange: honest nodes, then node 0 replaced by the valid moments pulling hardest
    rng = np.random.default_rng(seed)
    honest = [scaling.moments(x, bounds=BOUNDS) for x in honest_splits(seed)]
    attacker = honest[0]
    far = np.where(attacker.mean < 0.5, 1.0, 0.0)  # the bound farthest from its own data
    candidates = [
        scaling.Moments(count=attacker.count, mean=far, mean_square=far),  # point mass
        scaling.Moments(  # any other valid pair: m in [0, 1], m^2 <= s <= m
            count=attacker.count,
            mean=(m := rng.uniform(0, 1, 3)),
            mean_square=m**2 + rng.uniform(0, 1, 3) * (m - m**2),
        ),
    ]
    total = sum(m.count for m in honest)
    bound = scaling.influence_bound(
        count=attacker.count, total_count=total, bounds=BOUNDS, num_features=3
    )
    before = pool(honest).mean

    for poisoned in candidates:
        # Act
        after = pool([poisoned, *honest[1:]]).mean

        # Assert: |shift| <= (n_0 / N)(high - low), per feature
        assert np.all(np.abs(after - before) <= bound * (1 + 1e-9))
    # the hardest pull reaches at least half the bound (the attacker's own data are on
    # the other side of the middle), so the bound is not loose by more than 2x
    hardest = pool([candidates[0], *honest[1:]]).mean
    assert np.all(np.abs(hardest - before) >= 0.5 * bound * (1 - 1e-9))


def test_influence_bound_is_the_weight_share_of_each_features_range():
    out = scaling.influence_bound(count=45, total_count=450, bounds=BOUNDS, num_features=3)

    np.testing.assert_allclose(out, [1.0, 1.0, 290.0])
    with pytest.raises(ConfigError, match="0 <= count <= total_count"):
        scaling.influence_bound(count=5, total_count=4, bounds=BOUNDS, num_features=3)


@pytest.mark.parametrize(
    ("mean", "mean_square", "check"),
    [
        ([-0.01], [0.0], "mean >= low"),
        ([1.01], [1.0], "mean <= high"),
        ([0.5], [0.2], "variance >= 0"),
        ([0.5], [0.6], "Bhatia-Davis"),
        ([0.05], [1.0], "Bhatia-Davis"),  # the 1e12-like claim: a huge spread, small mean
    ],
)
def test_moments_outside_the_bounds_fail_the_named_check(mean, mean_square, check):
    with pytest.raises(scaling.StatisticsBoundsError, match="feature 0 exceeds it") as info:
        scaling.check_moments(np.array(mean), np.array(mean_square), what="node 3's moments")

    assert check in info.value.check
    assert "node 3's moments must satisfy" in str(info.value)
    assert isinstance(info.value, CorruptPayloadError)  # nodes refuse it like a bad payload


@pytest.mark.parametrize(
    ("mean", "mean_square"),
    [([0.0], [0.0]), ([1.0], [1.0]), ([0.3], [0.09]), ([0.3], [0.3]), ([0.5], [0.25 + 1e-9])],
)
def test_every_distribution_on_the_unit_interval_passes(mean, mean_square):
    scaling.check_moments(np.array(mean), np.array(mean_square), what="x")  # no raise


def test_valid_moments_average_to_valid_moments():
    # the set {0 <= m <= 1, m^2 <= s <= m} is convex: a weighted sum of honest ones passes
    rng = np.random.default_rng(7)
    m = rng.uniform(0, 1, (50, 4))
    s = m**2 + rng.uniform(0, 1, (50, 4)) * (m - m**2)
    w = rng.integers(1, 100, 50)[:, None]

    scaling.check_moments((w * m).sum(0) / w.sum(), (w * s).sum(0) / w.sum(), what="sum")


def test_the_rest_of_the_sum_must_be_valid_too():
    # Arrange: an out-of-range contribution (as an encrypted one could be) that leaves the
    # pooled moments valid but forces the others' to a negative variance
    own = scaling.moments(np.array([[0.0], [10.0]]), bounds=scaling.FeatureBounds(((0, 10),)))
    assert (own.mean[0], own.mean_square[0]) == (0.5, 0.5)
    pooled_m, pooled_s = np.array([0.5]), np.array([0.26])  # valid on its own
    limbs = scaling.to_limbs(np.stack([pooled_m, pooled_s]), step=STEP)
    common = {"total_count": 4, "own_count": 2, "sample_shape": (1,), "step": STEP}
    bounds = scaling.FeatureBounds(((0, 10),))

    scaling.pooled(limbs, bounds=bounds, **common)  # the sum alone passes

    # Act / Assert: node "own" knows the rest is (0.5, 0.02): variance 0.02 - 0.25 < 0
    with pytest.raises(scaling.StatisticsBoundsError, match="without this node's own") as info:
        scaling.pooled(limbs, bounds=bounds, own=own, **common)
    assert info.value.check == "variance >= 0, of the sum without this node's own"


def test_a_constant_feature_under_wide_bounds_is_only_centred_and_a_narrow_one_kept():
    # breast cancer's smoothness (std ~0.014) under one [0, 5000] pair: u's variance ~8e-12
    rng = np.random.default_rng(2)
    x = np.stack([np.full(200, 42.0), rng.normal(0.1, 0.014, 200)], axis=1)
    wide = scaling.FeatureBounds(((0.0, 5000.0),))

    scaler = pool(
        [scaling.moments(x[:120], bounds=wide), scaling.moments(x[120:], bounds=wide)], wide
    )

    assert scaler.scale[0] == 1.0
    np.testing.assert_allclose(scaler.mean, x.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scaler.scale[1], x[:, 1].std(), rtol=1e-5)


# ---------------------------------------------------------------- bounds and config
def test_bounds_parse_one_pair_or_one_per_feature():
    one = scaling.FeatureBounds.from_text("[0, 1]", what="x")
    per = scaling.FeatureBounds.from_text("[[0, 1], [-2.5, 3]]", what="x")

    assert one.arrays(3)[1].tolist() == [1.0, 1.0, 1.0]
    assert per.arrays(2)[0].tolist() == [0.0, -2.5]
    with pytest.raises(ConfigError, match=r"1 pair or one per feature \(3\); got 2"):
        per.arrays(3)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[0, 1", "must be JSON"),
        ("[1, 0]", "pair 0 must be finite with low < high"),
        ("[[0, 1], [2, 2]]", "pair 1 must be finite with low < high"),
        ("[NaN, 1]", "pair 0 must be finite"),
        ("[0, 1e13]", r"\|values\| <= 1e12"),
        ("[true, 2]", "one \\[low, high\\] pair or a non-empty list"),
        ("[]", "non-empty list"),
        ('{"low": 0}', "non-empty list"),
    ],
)
def test_bad_bounds_are_refused_naming_the_key(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        ExperimentConfig.from_mapping({"data": {"feature_bounds": text}})
    assert "data.feature_bounds" in str(info.value)


def test_federated_statistics_need_declared_bounds():
    with pytest.raises(ConfigError, match=r"'federated' needs data\.feature_bounds"):
        ExperimentConfig.from_mapping({"data": {"statistics": "federated"}})
    ok = ExperimentConfig.from_mapping(
        {"data": {"statistics": "federated", "feature_bounds": "[0, 1]"}}
    )
    assert ok.data.feature_bounds == "[0, 1]"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"standardize": "none", "feature_bounds": "[0, 1]"}, "applies only when features"),
        ({"statistics": "local", "feature_bounds": "[0, 1]"}, "applies only to federated"),
        ({"max_statistics_weight_share": 0.0}, r"must be in \(0, 1\]"),
        ({"max_statistics_weight_share": 1.5}, r"must be in \(0, 1\]"),
    ],
)
def test_bounds_settings_without_effect_or_out_of_range_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_mapping({"data": data})


def test_the_run_may_narrow_a_nodes_bounds_never_widen_them():
    node = scaling.FeatureBounds(((0.0, 10.0), (-5.0, 5.0)))

    assert scaling.FeatureBounds(((1.0, 4.0),)).narrowing(node) is None
    assert scaling.FeatureBounds(((0.0, 10.0), (-5.0, 5.0))).narrowing(node) is None
    wider = scaling.FeatureBounds(((0.0, 10.0), (-6.0, 5.0))).narrowing(node)
    assert wider == "data.feature_bounds is wider than the node's feature-bounds on 1 feature(s)"
    assert "must agree" in (scaling.FeatureBounds(((0, 1),) * 3).narrowing(node) or "")


def test_a_nodes_bounds_file_is_read_and_its_contents_never_quoted(tmp_path):
    good = tmp_path / "bounds.json"
    good.write_text(json.dumps([[0, 10], [-5, 5]]), encoding="utf-8")
    secret = tmp_path / "bad.json"
    secret.write_text("patient 4711: [9, 1]", encoding="utf-8")

    assert scaling.FeatureBounds.from_file(str(good)).pairs == ((0.0, 10.0), (-5.0, 5.0))
    with pytest.raises(ConfigError, match="node_config feature-bounds must hold JSON") as info:
        scaling.FeatureBounds.from_file(str(secret))
    assert "4711" not in str(info.value)
    with pytest.raises(ConfigError, match="must name a readable JSON file"):
        scaling.FeatureBounds.from_file(str(tmp_path / "missing.json"))


def test_data_section_parses_what_it_validated():
    data = DataSection(feature_bounds="[[0, 1], [2, 3]]")

    assert scaling.FeatureBounds.from_config(data) == scaling.FeatureBounds(
        ((0.0, 1.0), (2.0, 3.0))
    )
    assert scaling.FeatureBounds.from_config(DataSection()) is None
