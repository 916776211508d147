"""CKKS secure sum against the plaintext reference, and every corrupted-payload case."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedai.aggregation import PlainCodec, PlainSum
from fedai.config import SecureAggregationSection
from fedai.crypto import (
    CkksCodec,
    CkksSum,
    ClientBundle,
    Envelope,
    Scheme,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.errors import ConfigError, CorruptPayloadError, KeyMismatchError

Arrays = list[np.ndarray]
SHAPES = [(40, 64), (40,), (10, 40), (10,)]  # 3010 values -> 1 ciphertext
SHAPES_2 = [(100, 64), (100,), (10, 100), (10,)]  # 7510 values -> 2 ciphertexts
DIGITS_MLP = [(128, 64), (128,), (128, 128), (128,), (10, 128), (10,)]  # 26122 values


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckks")
    create_keys(out)
    return out


@pytest.fixture(scope="module")
def codec(keys: Path) -> CkksCodec:
    return CkksCodec(load_client_bundle(keys))


@pytest.fixture(scope="module")
def summer(keys: Path) -> CkksSum:
    return CkksSum(load_coordinator_bundle(keys))


def _models(
    rng: np.random.Generator, shapes: Sequence[tuple[int, ...]], k: int, scale: float = 0.3
) -> list[Arrays]:
    return [[rng.normal(0, scale, s).astype(np.float32) for s in shapes] for _ in range(k)]


def _plain(models: list[Arrays], weights: list[float], shapes: Sequence[tuple[int, ...]]) -> Arrays:
    enc = PlainCodec()
    agg = PlainSum().sum([enc.encode(m, n) for m, n in zip(models, weights, strict=True)])
    return enc.decode(agg, sum(weights), shapes)


def _max_diff(a: Arrays, b: Arrays) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


def _secure(
    codec: CkksCodec,
    summer: CkksSum,
    models: list[Arrays],
    weights: list[float],
    shapes: Sequence[tuple[int, ...]],
) -> Arrays:
    payloads = [codec.encode(m, n) for m, n in zip(models, weights, strict=True)]
    for p in payloads:
        summer.check(p)
    return codec.decode(summer.sum(payloads), sum(weights), shapes)


def test_roundtrip_matches_plain_fedavg(codec: CkksCodec, summer: CkksSum) -> None:
    rng = np.random.default_rng(0)
    models = _models(rng, SHAPES_2, 3)
    weights = [120.0, 7.0, 415.0]

    got = _secure(codec, summer, models, weights, SHAPES_2)
    want = _plain(models, weights, SHAPES_2)

    assert [a.shape for a in got] == SHAPES_2
    assert all(a.dtype == np.float32 for a in got)
    assert _max_diff(got, want) <= 1e-5
    assert _max_diff(got, want) > 0  # rounded to 6 decimals, not the plain values passed through


def test_payload_is_not_plaintext(codec: CkksCodec) -> None:
    model = _models(np.random.default_rng(1), SHAPES, 1)[0]

    payload = codec.encode(model, 3.0)

    assert all(a.dtype == np.uint8 for a in payload)
    wire = b"".join(a.tobytes() for a in payload)
    for w in (model[0].ravel()[:4], (3.0 * model[0].ravel()[:4]).astype(np.float32)):
        assert w.tobytes() not in wire
        assert w.astype(np.float64).tobytes() not in wire
    # one 4096-slot ciphertext of the default [60,50,60] chain: ~61 B per slot
    assert 55 < sum(a.size for a in payload[1:]) / 4096 < 70


def test_decode_rounds_to_the_configured_decimals(keys: Path, summer: CkksSum) -> None:
    codec = CkksCodec(load_client_bundle(keys), round_decimals=3, update_bound=10.0)
    model = [np.full((5,), 0.123456, np.float64)]

    out = codec.decode(summer.sum([codec.encode(model, 2.0)]), 2.0, [(5,)])

    np.testing.assert_array_equal(out[0], np.full(5, 0.123))


def test_noise_flooding_is_seeded_and_bounded(keys: Path, summer: CkksSum) -> None:
    def run(seed: int) -> np.ndarray:
        codec = CkksCodec(
            load_client_bundle(keys),
            flood_sigma=1e-4,
            round_decimals=None,
            rng=np.random.default_rng(seed),
        )
        model = [np.zeros(4000, np.float64)]
        return codec.decode(codec.encode(model, 5.0), 5.0, [(4000,)])[0]

    a, b, c = run(7), run(7), run(8)

    assert np.max(np.abs(a - b)) < 1e-7  # same noise; only CKKS error differs
    assert np.max(np.abs(a - c)) > 1e-5
    assert 0.8e-4 < float(np.std(a)) < 1.2e-4
    with pytest.raises(ConfigError, match="rng must be given"):
        CkksCodec(load_client_bundle(keys), flood_sigma=1e-3)


def test_encode_refuses_values_beyond_the_public_bound(codec: CkksCodec) -> None:
    model = [np.array([1.0, -100.5], np.float32)]

    with pytest.raises(ConfigError, match=r"update_bound 100; got 100\.5"):
        codec.encode(model, 1.0)
    with pytest.raises(ConfigError, match="finite"):
        codec.encode([np.array([np.nan], np.float32)], 1.0)
    with pytest.raises(ConfigError, match="weight must be > 0"):
        codec.encode([np.zeros(3, np.float32)], 0.0)


def test_headroom_limit_on_a_short_modulus(tmp_path: Path) -> None:
    create_keys(tmp_path, coeff_mod_bit_sizes=(60, 40))
    codec = CkksCodec(load_client_bundle(tmp_path), update_bound=100.0)
    summer = CkksSum(load_coordinator_bundle(tmp_path))
    model = [np.full(10, 99.0, np.float32)]

    assert codec.max_total_weight == 2.0**18 / 100
    with pytest.raises(ConfigError, match="CKKS headroom"):
        codec.encode(model, 3000.0)
    agg = summer.sum([codec.encode(model, 2000.0), codec.encode(model, 600.0)])
    np.testing.assert_allclose(codec.decode(agg, 2600.0, [(10,)])[0], 99.0, atol=1e-5)
    with pytest.raises(CorruptPayloadError, match="cannot wrap"):
        codec.decode(agg, 2700.0, [(10,)])


@pytest.fixture(scope="module")
def good(codec: CkksCodec) -> list[np.ndarray]:
    return codec.encode(_models(np.random.default_rng(2), SHAPES_2, 1)[0], 10.0)


def _flip(payload: list[np.ndarray], which: int, pos: int) -> list[np.ndarray]:
    out = [a.copy() for a in payload]
    out[which][pos] ^= 0x10
    return out


CORRUPTIONS: dict[str, tuple[Callable[[list[np.ndarray]], list[np.ndarray]], str]] = {
    "bit-flipped ciphertext": (lambda p: _flip(p, 1, p[1].size // 2), "authentication tag"),
    "bit-flipped header": (lambda p: _flip(p, 0, 60), "authentication tag|must"),
    "truncated ciphertext": (lambda p: [p[0], p[1][: p[1].size // 2], p[2]], "tag"),
    "dropped ciphertext": (lambda p: p[:2], "must hold 2 ciphertexts"),
    "extra ciphertext": (lambda p: [*p, p[1]], "must hold 2 ciphertexts"),
    "empty payload": (lambda p: [], "header array"),
    "empty ciphertext b''": (lambda p: [p[0], np.zeros(0, np.uint8), p[2]], "1\\.\\."),
    "random header": (
        lambda p: [np.random.default_rng(3).integers(0, 256, p[0].size, dtype=np.uint8), *p[1:]],
        "magic",
    ),
    "random ciphertext": (
        lambda p: [
            p[0],
            np.random.default_rng(4).integers(0, 256, p[1].size, dtype=np.uint8),
            p[2],
        ],
        "tag",
    ),
    "float array": (lambda p: [p[0], p[1].astype(np.float32), p[2]], "uint8"),
    "swapped ciphertexts": (lambda p: [p[0], p[2], p[1]], "tag"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_check_rejects_corrupted_payloads(
    case: str, good: list[np.ndarray], summer: CkksSum
) -> None:
    mutate, match = CORRUPTIONS[case]

    with pytest.raises(CorruptPayloadError, match=match):
        summer.check(mutate(good))


def test_check_rejects_a_foreign_key_payload(
    tmp_path: Path, summer: CkksSum, codec: CkksCodec
) -> None:
    create_keys(tmp_path)
    foreign = CkksCodec(load_client_bundle(tmp_path))
    payload = foreign.encode(_models(np.random.default_rng(5), SHAPES, 1)[0], 1.0)

    with pytest.raises(KeyMismatchError, match="another key set"):
        summer.check(payload)
    with pytest.raises(KeyMismatchError, match="another key set"):
        codec.decode(payload, 1.0, SHAPES)


def test_check_accepts_the_good_payload_and_rejects_an_aggregate(
    good: list[np.ndarray], summer: CkksSum
) -> None:
    summer.check(good)

    with pytest.raises(CorruptPayloadError, match="must be one client contribution"):
        summer.check(summer.sum([good]))


def test_sum_rejects_mixed_layouts(
    codec: CkksCodec, summer: CkksSum, good: list[np.ndarray]
) -> None:
    other = codec.encode(_models(np.random.default_rng(6), SHAPES, 1)[0], 1.0)

    with pytest.raises(CorruptPayloadError, match="layout must match"):
        summer.sum([good, other])
    with pytest.raises(CorruptPayloadError, match="at least one"):
        summer.sum([])


def test_decode_rejects_wrong_shapes_and_weights(
    codec: CkksCodec, summer: CkksSum, good: list[np.ndarray]
) -> None:
    agg = summer.sum([good])

    with pytest.raises(CorruptPayloadError, match="aggregate shapes must be"):
        codec.decode(agg, 10.0, SHAPES)
    with pytest.raises(CorruptPayloadError, match="total weight must be > 0"):
        codec.decode(agg, 0.0, SHAPES_2)
    with pytest.raises(CorruptPayloadError, match="authentication tag"):
        codec.decode(_flip(agg, 2, 1000), 10.0, SHAPES_2)


def _reseal(
    bundle: ClientBundle, payload: list[np.ndarray], blobs: list[bytes]
) -> list[np.ndarray]:
    """What a faulty key holder (or memory error before tagging) would send: valid tag."""
    env, _ = Envelope.from_payload(
        payload,
        scheme=Scheme.CKKS,
        fingerprint=bundle.fingerprint,
        mac_key=bundle._mac_key,
        slots=bundle.params.slots,
    )
    return env.to_payload(blobs, mac_key=bundle._mac_key)


def test_huge_decryption_is_caught_by_the_bounds_check(
    keys: Path, codec: CkksCodec, summer: CkksSum, good: list[np.ndarray]
) -> None:
    bundle = load_client_bundle(keys)
    n0, n1 = 4096, 7510 - 4096
    garbage = [
        ts.ckks_vector(bundle._context, np.full(n0, 1e12)).serialize(),
        ts.ckks_vector(bundle._context, np.zeros(n1)).serialize(),
    ]
    bad = _reseal(bundle, good, garbage)
    summer.check(bad)  # authentic bytes: only the values are wrong

    with pytest.raises(CorruptPayloadError, match=r"within \+-100 .*corrupt"):
        codec.decode(summer.sum([good, bad]), 20.0, SHAPES_2)


@pytest.mark.integration
def test_authentic_bit_flips_are_rejected_or_harmless(
    keys: Path, codec: CkksCodec, summer: CkksSum, good: list[np.ndarray]
) -> None:
    """Bit flips that pass authentication never yield a silently wrong model.

    20 seeded positions across the first ciphertext; each is re-tagged so ``check``
    passes, then must be rejected by ``sum`` (parse/size) or ``decode`` (bounds), or decode
    to the right model. Measured on 960 flips: ~56% decrypt to ~1e31, ~43% fail to parse,
    <1% are harmless; none decoded wrong within bounds.
    """
    bundle = load_client_bundle(keys)
    model = _models(np.random.default_rng(2), SHAPES_2, 1)[0]
    want = _plain([model], [10.0], SHAPES_2)
    blob = good[1].tobytes()
    positions = np.random.default_rng(9).choice(np.arange(64, len(blob)), 20, replace=False)
    outcomes = {"bounds": 0, "parse": 0, "harmless": 0}
    rejections: list[str] = []

    for pos in positions:
        flipped = bytearray(blob)
        flipped[pos] ^= 0x04
        bad = _reseal(bundle, good, [bytes(flipped), good[2].tobytes()])
        summer.check(bad)
        try:
            agg = summer.sum([bad])
        except CorruptPayloadError:
            outcomes["parse"] += 1
            continue
        try:
            got = codec.decode(agg, 10.0, SHAPES_2)
        except CorruptPayloadError as err:
            rejections.append(str(err))
            outcomes["bounds"] += 1
            continue
        assert _max_diff(got, want) <= 1e-5
        outcomes["harmless"] += 1

    assert outcomes["bounds"] >= 1, outcomes
    assert all("update_bound" in m for m in rejections), rejections


@pytest.mark.integration
def test_digits_mlp_ten_clients_matches_plain(codec: CkksCodec, summer: CkksSum) -> None:
    rng = np.random.default_rng(10)
    models = _models(rng, DIGITS_MLP, 10, scale=2.0)
    models[0][0][0, 0] = 99.9  # near the public bound
    weights = [float(n) for n in rng.integers(1, 600, 10)]

    got = _secure(codec, summer, models, weights, DIGITS_MLP)
    want = _plain(models, weights, DIGITS_MLP)

    assert _max_diff(got, want) <= 1e-5


@pytest.mark.integration
def test_unrounded_error_is_tiny_in_natural_units(keys: Path, summer: CkksSum) -> None:
    codec = CkksCodec(load_client_bundle(keys), round_decimals=None)
    rng = np.random.default_rng(11)
    models = [[rng.uniform(-100, 100, (5000,))] for _ in range(5)]
    weights = [500.0, 1.0, 250.0, 3.0, 80.0]

    got = _secure(codec, summer, models, weights, [(5000,)])
    want = sum(n * m[0] for n, m in zip(weights, models, strict=True)) / sum(weights)

    assert float(np.max(np.abs(got[0] - want))) < 1e-7


def test_from_config_builds_both_sides(keys: Path) -> None:
    section = SecureAggregationSection(scheme="ckks", key_dir=str(keys), update_bound=5.0)

    codec = CkksCodec.from_config(section)
    summer = CkksSum.from_config(section)

    assert codec.update_bound == 5.0
    assert codec.fingerprint == summer.fingerprint
    assert summer.is_private() is False
    with pytest.raises(ConfigError, match="key_dir must name"):
        CkksSum.from_config(SecureAggregationSection(scheme="ckks"))
    with pytest.raises(ConfigError, match="scheme must be 'ckks'"):
        CkksCodec.from_config(SecureAggregationSection(scheme="none", key_dir=str(keys)))


@pytest.mark.parametrize("shapes", [SHAPES, SHAPES_2])
def test_ckks_aggregate_equals_the_plaintext_one_bit_for_bit(
    codec: CkksCodec, summer: CkksSum, shapes: list[tuple[int, ...]]
) -> None:
    # Arrange: integer weights, as the apps use (example counts, or 1 under user-level DP)
    models = _models(np.random.default_rng(5), shapes, 5)
    weights = [37, 120, 5, 260, 88]
    plain = PlainCodec(round_decimals=codec.round_decimals)
    # Act
    expected = plain.decode(
        PlainSum().sum([plain.encode(m, w) for m, w in zip(models, weights, strict=True)]),
        sum(weights),
        shapes,
    )
    got = codec.decode(
        summer.sum([codec.encode(m, w) for m, w in zip(models, weights, strict=True)]),
        sum(weights),
        shapes,
    )
    # Assert: snapping the decrypted sum to the grid removed the CKKS error entirely
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float32))


@pytest.mark.parametrize(
    ("encryption", "bits", "scale_bits"),
    [
        ("symmetric", (60, 40), 36),  # the README's compact profile
        ("public-key", (60, 50, 60), 40),  # key sets made before symmetric became default
    ],
)
def test_other_profiles_decode_100_contributions_bit_for_bit(
    tmp_path: Path, encryption: str, bits: tuple[int, ...], scale_bits: int
) -> None:
    create_keys(
        tmp_path,
        coeff_mod_bit_sizes=bits,
        global_scale=2.0**scale_bits,
        encryption=encryption,  # type: ignore[arg-type]
    )
    codec = CkksCodec(load_client_bundle(tmp_path), update_bound=10.0)
    summer = CkksSum(load_coordinator_bundle(tmp_path))
    rng = np.random.default_rng(11)
    models = _models(rng, SHAPES, 100, scale=3.0)
    models = [[np.clip(a, -10, 10) for a in m] for m in models]
    weights = [int(w) for w in rng.integers(1, 400, 100)]
    assert sum(weights) * codec.update_bound <= 2.0**codec._bundle.params.magnitude_bits
    plain = PlainCodec(round_decimals=codec.round_decimals)

    expected = plain.decode(
        PlainSum().sum([plain.encode(m, w) for m, w in zip(models, weights, strict=True)]),
        sum(weights),
        SHAPES,
    )
    got = codec.decode(
        summer.sum([codec.encode(m, w) for m, w in zip(models, weights, strict=True)]),
        sum(weights),
        SHAPES,
    )

    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float32))
