"""Federated feature statistics: pooled moments, their encoding, validation, config, policy."""

import numpy as np
import pytest

from fedai.aggregation import PlainCodec, PlainSum
from fedai.config import ExperimentConfig
from fedai.data import scaling
from fedai.errors import ConfigError, CorruptPayloadError, DataError
from fedai.policy import NodePolicy

STEP = 1e-6  # the plaintext/CKKS grid at round_decimals = 6
#: Declared bounds that clip nothing of :func:`label_skewed_clients`.
BOUNDS = scaling.FeatureBounds(
    ((-2000.0, 4000.0), (0.0, 1.0), (-20.0, 20.0), (0.0, 2e5), (-0.1, 0.1))
)
UNIT = scaling.FeatureBounds(((0.0, 1.0),))


def label_skewed_clients(seed: int = 0) -> list[np.ndarray]:
    """Training splits of very different sizes, locations and scales (breast-cancer-like)."""
    rng = np.random.default_rng(seed)
    mean = np.array([650.0, 0.1, -3.0, 1e5, 0.0])
    std = np.array([350.0, 0.014, 2.0, 3e3, 1e-3])
    return [
        rng.normal(mean + shift * std, std, size=(n, 5))
        for n, shift in ((7, -2.0), (50, 0.5), (120, 1.0), (33, 3.0))
    ]


def pooled_through(
    codec: PlainCodec,
    summer: PlainSum,
    splits: list[np.ndarray],
    bounds: scaling.FeatureBounds = BOUNDS,
):
    """What a node derives: every split shared, summed by the coordinator, decoded."""
    d = splits[0].shape[1]
    payloads = [
        codec.encode([scaling.share(scaling.moments(x, bounds=bounds), step=STEP)], len(x))
        for x in splits
    ]
    total = float(sum(len(x) for x in splits))
    (average,) = codec.decode(summer.sum(payloads), total, scaling.shapes_of(d, step=STEP))
    return scaling.pooled(
        average,
        total_count=total,
        own_count=len(splits[0]),
        sample_shape=(d,),
        step=STEP,
        bounds=bounds,
    )


def test_pooled_statistics_equal_numpy_on_the_concatenated_training_splits():
    # Arrange
    splits = label_skewed_clients()
    codec = PlainCodec(bound=1.0, round_decimals=6, float64=True)

    # Act
    scaler = pooled_through(codec, PlainSum(), splits)

    # Assert: independent computation on all rows at once
    everything = np.concatenate(splits)
    np.testing.assert_allclose(scaler.mean, everything.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scaler.scale, everything.std(axis=0), rtol=1e-6)


def test_pooled_statistics_differ_from_every_clients_own():
    splits = label_skewed_clients()

    scaler = pooled_through(
        PlainCodec(bound=1.0, round_decimals=6, float64=True), PlainSum(), splits
    )

    for x in splits:  # the point of pooling: no client's own statistics are the pooled ones
        assert not np.allclose(scaling.fit(x).mean, scaler.mean, rtol=1e-3)


def test_constant_feature_is_only_centred():
    splits = [np.full((4, 2), 7.0), np.full((9, 2), 7.0)]
    splits[1][:, 1] = np.arange(9.0)

    scaler = pooled_through(
        PlainCodec(bound=1.0, round_decimals=6, float64=True),
        PlainSum(),
        splits,
        scaling.FeatureBounds(((0.0, 10.0),)),
    )

    assert scaler.scale[0] == 1.0
    np.testing.assert_allclose(scaler.mean[0], 7.0)
    assert scaler.scale[1] > 0


@pytest.mark.parametrize("step", [1e-6, 1e-12, 0.1, 1.0 / (2**31 - 1), 1.0 / (2**15 - 1)])
def test_limbs_round_trip_and_stay_in_the_unit_bound(step):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(0, 1, 20) * 10.0 ** rng.integers(-14, 1, 20), [0, 1]])

    limbs = scaling.to_limbs(values, step=step)

    assert limbs.shape == (scaling.limbs_for(step), values.size)
    assert scaling.BOUND * step ** limbs.shape[0] <= scaling.PRECISION * (1 + 1e-9)
    assert np.all(np.abs(limbs) <= 1.0)
    np.testing.assert_allclose(limbs, np.rint(limbs / step) * step, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        scaling.from_limbs(limbs, step=step), values, rtol=1e-12, atol=scaling.PRECISION
    )


def test_limb_counts_for_the_schemes_grids():
    assert scaling.limbs_for(1e-6) == 3
    assert scaling.limbs_for(1.0 / (2**31 - 1)) == 2
    with pytest.raises(ConfigError, match="statistics grid step must be in"):
        scaling.limbs_for(1.0)


def test_limbs_average_to_the_limbs_of_the_average():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 1, 6), rng.uniform(0, 1e-6, 6)

    mixed = (3 * scaling.to_limbs(a, step=STEP) + 5 * scaling.to_limbs(b, step=STEP)) / 8

    np.testing.assert_allclose(
        scaling.from_limbs(mixed, step=STEP), (3 * a + 5 * b) / 8, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize(
    ("values", "match"),
    [(np.array([np.nan]), "finite"), (np.array([2.5]), "must lie within \\+-1 to share")],
)
def test_values_that_cannot_be_shared_are_refused_without_quoting_them(values, match):
    with pytest.raises(DataError, match=match) as info:
        scaling.to_limbs(values, step=STEP)
    assert "2.5" not in str(info.value)


def good_average(d: int = 3) -> np.ndarray:
    x = np.arange(12.0).reshape(4, d)
    return scaling.share(scaling.moments(x, bounds=scaling.FeatureBounds(((0, 12),))), step=STEP)


@pytest.mark.parametrize(
    ("average", "total", "own", "match"),
    [
        (np.zeros((3, 2, 4)), 10.0, 4, r"shape \(3, 2, 3\) for 3 feature\(s\); got \(3, 2, 4\)"),
        (np.zeros(6), 10.0, 4, r"shape \(3, 2, 3\)"),
        (np.zeros((2, 2, 3)), 10.0, 4, r"shape \(3, 2, 3\)"),
        (np.full((3, 2, 3), np.nan), 10.0, 4, "must be finite; got NaN"),
        (good_average(), 3.0, 4, r"total count must be in \[4 \(this node's own count\)"),
        (good_average(), 1e13, 4, "total count must be in"),
        (good_average(), float("inf"), 4, "total count must be in"),
    ],
)
def test_bad_aggregates_are_refused_with_a_typed_error(average, total, own, match):
    with pytest.raises(CorruptPayloadError, match=match):
        scaling.pooled(
            average, total_count=total, own_count=own, sample_shape=(3,), step=STEP, bounds=UNIT
        )


def test_negative_variance_is_refused_but_float_noise_is_zero():
    common = {"total_count": 8, "own_count": 4, "sample_shape": (2,), "step": STEP}
    limbs = scaling.to_limbs(np.array([[0.5, 0.5], [0.25, 0.25 - 1e-17]]), step=STEP)
    noisy = scaling.pooled(limbs, bounds=UNIT, **common)
    assert noisy.scale.tolist() == [1.0, 1.0]  # variance 0 and -1e-17: both constant

    hostile = scaling.to_limbs(np.array([[0.5, 0.5], [0.25, 0.24]]), step=STEP)
    with pytest.raises(
        CorruptPayloadError, match=r"variance >= 0 on every feature.*feature 1 exceeds it by 0\.01"
    ):
        scaling.pooled(hostile, bounds=UNIT, **common)


def test_image_shaped_features_get_per_pixel_pooled_statistics():
    rng = np.random.default_rng(5)
    splits = [rng.normal(i, 1 + i, size=(10 + i, 2, 3)) for i in range(3)]
    codec, summer = PlainCodec(bound=1.0, round_decimals=6, float64=True), PlainSum()
    wide = scaling.FeatureBounds(((-20.0, 20.0),))
    payloads = [
        codec.encode([scaling.share(scaling.moments(x, bounds=wide), step=STEP)], len(x))
        for x in splits
    ]
    total = float(sum(len(x) for x in splits))
    (average,) = codec.decode(summer.sum(payloads), total, scaling.shapes_of(6, step=STEP))

    scaler = scaling.pooled(
        average, total_count=total, own_count=10, sample_shape=(2, 3), step=STEP, bounds=wide
    )

    everything = np.concatenate(splits)
    assert scaler.mean.shape == (2, 3)
    np.testing.assert_allclose(scaler.mean, everything.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(scaler.scale, everything.std(axis=0), rtol=1e-6)


# ---------------------------------------------------------------- config and policy
def test_statistics_mode_resolves_auto_by_privacy_mode_and_bounds():
    assert scaling.statistics_mode("auto", privacy_mode="none", bounded=True) == "federated"
    assert scaling.statistics_mode("auto", privacy_mode="none", bounded=False) == "local"
    assert scaling.statistics_mode("auto", privacy_mode="none") == "local"  # not said: no
    assert scaling.statistics_mode("auto", privacy_mode="local", bounded=True) == "local"
    assert scaling.statistics_mode("local", privacy_mode="none", bounded=True) == "local"
    with pytest.raises(ConfigError, match=r"data\.statistics 'federated' needs privacy\.mode"):
        scaling.statistics_mode("federated", privacy_mode="local", bounded=True)
    with pytest.raises(ConfigError, match=r"'federated' needs data\.feature_bounds"):
        scaling.statistics_mode("federated", privacy_mode="none", bounded=False)
    with pytest.raises(ConfigError, match=r"data\.statistics must be one of"):
        scaling.statistics_mode("pooled", privacy_mode="none")


def test_config_refuses_federated_statistics_under_dp_naming_both_keys():
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_mapping(
            {
                "data": {"statistics": "federated", "feature_bounds": "[0, 1]"},
                "privacy": {"mode": "local", "noise_multiplier": 1.0},
            }
        )
    assert "data.statistics 'federated' needs privacy.mode 'none'" in str(info.value)
    assert "got privacy.mode 'local'" in str(info.value)


def test_config_refuses_an_unknown_or_ineffective_statistics_setting():
    with pytest.raises(ConfigError, match=r"data\.statistics must be one of 'auto'"):
        ExperimentConfig.from_mapping({"data": {"statistics": "pooled"}})
    with pytest.raises(ConfigError, match=r"data\.statistics applies only when features are"):
        ExperimentConfig.from_mapping({"data": {"standardize": "none", "statistics": "local"}})
    assert ExperimentConfig().data.statistics == "auto"


def test_node_policy_share_statistics():
    assert NodePolicy.from_node_config({}).statistics_refusal() is None
    off = NodePolicy.from_node_config({"share-statistics": "false"})
    assert off.statistics_refusal() == "node policy share-statistics is false"
    dp = NodePolicy.from_node_config({"require-privacy": "local"})
    assert "not differentially private" in (dp.statistics_refusal() or "")
    with pytest.raises(ConfigError, match="share-statistics must be true or false; got 'maybe'"):
        NodePolicy.from_node_config({"share-statistics": "maybe"})
