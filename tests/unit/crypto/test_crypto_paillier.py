"""Paillier: key bundles, raw arithmetic, the packed codec and the coordinator's sum."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import gmpy2
import numpy as np
import phe
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedai.cli import main
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.crypto import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    Envelope,
    PaillierCodec,
    PaillierSum,
    Scheme,
    create_keys,
    load_paillier_client_bundle,
    load_paillier_coordinator_bundle,
)
from fedai.crypto.paillier import layout_mac_key, weight_problems
from fedai.crypto.paillier_keys import PaillierClientBundle
from fedai.crypto.paillier_math import PublicKey, SecretKey
from fedai.data import load_client
from fedai.errors import (
    ConfigError,
    ContributionError,
    CorruptPayloadError,
    InsecureParametersError,
    KeyFileError,
    KeyMismatchError,
)
from fedai.preflight import check_run
from fedai.schemes import client_codec, coordinator_sum
from fedai.schemes import weight_problems as schemes_weight_problems

SHAPES = [(3, 4), (4,)]
MAX_CLIENTS = 12  # the property test's configured maximum total weight


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paillier")
    create_keys(out, scheme="paillier", key_bits=2048)
    return out


@pytest.fixture(scope="module")
def foreign_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paillier-foreign")
    create_keys(out, scheme="paillier", key_bits=2048)
    return out


def codec(keys: Path, **kwargs: object) -> PaillierCodec:
    options: dict[str, object] = {"workers": 1, "rng": np.random.default_rng(0)}
    options.update(kwargs)
    return PaillierCodec(load_paillier_client_bundle(keys), **options)  # type: ignore[arg-type]


def summer(keys: Path, **kwargs: int) -> PaillierSum:
    return PaillierSum(load_paillier_coordinator_bundle(keys), **kwargs)


def model(seed: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, s) * scale).astype(np.float32) for s in SHAPES]


def reseal(c: PaillierCodec, payload: list[np.ndarray], blobs: list[bytes]) -> list[np.ndarray]:
    """What a faulty key holder would send: other ciphertext bytes under a valid tag."""
    env, _ = Envelope.from_payload(
        payload,
        scheme=Scheme.PAILLIER,
        fingerprint=c.fingerprint,
        mac_key=c._mac_key,
        slots=c.values_per_blob,
    )
    return env.to_payload(blobs, mac_key=c._mac_key)


# ---------------------------------------------------------------------- keys
def test_bundles_modes_and_contents(keys: Path) -> None:
    client = load_paillier_client_bundle(keys)
    coordinator = load_paillier_coordinator_bundle(keys)
    p_bytes = int(client._secret.p).to_bytes(128, "big")

    assert (keys / CLIENT_BUNDLE).stat().st_mode & 0o777 == 0o600
    assert (keys / COORDINATOR_BUNDLE).stat().st_mode & 0o777 == 0o600
    assert client.fingerprint == coordinator.fingerprint
    assert client.key_bits == coordinator.key_bits == 2048
    assert coordinator.is_private() is False
    assert not hasattr(coordinator, "_secret")
    assert p_bytes in (keys / CLIENT_BUNDLE).read_bytes()
    assert p_bytes not in (keys / COORDINATOR_BUNDLE).read_bytes()
    assert int(coordinator.public_key.n) == int(client._secret.p * client._secret.q)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_default_key_is_3072_bits_in_a_0700_directory(tmp_path: Path) -> None:
    out = tmp_path / "new" / "keys"

    bundle = create_keys(out, scheme="paillier")

    assert bundle.key_bits == 3072
    assert out.stat().st_mode & 0o777 == 0o700
    assert load_paillier_coordinator_bundle(out).key_bits == 3072


def test_short_keys_are_refused_unless_forced(tmp_path: Path) -> None:
    with pytest.raises(InsecureParametersError, match="key_bits must be >= 2048"):
        create_keys(tmp_path / "a", scheme="paillier", key_bits=1536)
    with pytest.raises(ConfigError, match="refused even when forced"):
        create_keys(tmp_path / "b", scheme="paillier", key_bits=768, force=True)
    with pytest.raises(ConfigError, match="even number"):
        create_keys(tmp_path / "c", scheme="paillier", key_bits=2049)

    forced = create_keys(tmp_path / "d", scheme="paillier", key_bits=1024, force=True)

    assert forced.key_bits == 1024
    assert json.loads(_meta(tmp_path / "d" / CLIENT_BUNDLE))["forced"] is True
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def _meta(path: Path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack_from(">I", data, 8)
    return data[12 : 12 + n]


def _rewrite(path: Path, meta: dict[str, object], body: bytes) -> None:
    import hashlib

    meta = {**meta, "context_sha256": hashlib.sha256(body).hexdigest()}
    text = json.dumps(meta).encode()
    path.write_bytes(b"FEDAIKEY" + struct.pack(">I", len(text)) + text + body)


def _split(path: Path) -> tuple[dict[str, object], bytes]:
    meta = _meta(path)
    return json.loads(meta), path.read_bytes()[12 + len(meta) :]


def test_client_bundle_with_other_primes_is_refused(
    tmp_path: Path, keys: Path, foreign_keys: Path
) -> None:
    meta, _ = _split(keys / CLIENT_BUNDLE)
    _, other_primes = _split(foreign_keys / CLIENT_BUNDLE)
    _rewrite(tmp_path / CLIENT_BUNDLE, meta, other_primes)

    with pytest.raises(KeyFileError, match="private key to match fingerprint"):
        load_paillier_client_bundle(tmp_path)


def test_client_bundle_with_non_primes_is_refused(tmp_path: Path, keys: Path) -> None:
    meta, _ = _split(keys / CLIENT_BUNDLE)
    half = (2**1023 + 1).to_bytes(128, "big")
    _rewrite(tmp_path / CLIENT_BUNDLE, meta, b"".join([struct.pack(">I", 128), half] * 2))

    with pytest.raises(KeyFileError, match="valid Paillier private key"):
        load_paillier_client_bundle(tmp_path)


def test_coordinator_bundle_with_smuggled_primes_or_other_n_is_refused(
    tmp_path: Path, keys: Path, foreign_keys: Path
) -> None:
    meta, body = _split(keys / COORDINATOR_BUNDLE)
    _, client_body = _split(keys / CLIENT_BUNDLE)
    _, other_n = _split(foreign_keys / COORDINATOR_BUNDLE)

    _rewrite(tmp_path / COORDINATOR_BUNDLE, meta, body + client_body)
    with pytest.raises(KeyFileError, match="public modulus only"):
        load_paillier_coordinator_bundle(tmp_path)
    _rewrite(tmp_path / COORDINATOR_BUNDLE, meta, other_n)
    with pytest.raises(KeyFileError, match="public key to match fingerprint"):
        load_paillier_coordinator_bundle(tmp_path)


def test_wrong_scheme_and_kind_are_named(tmp_path: Path, keys: Path) -> None:
    create_keys(tmp_path, scheme="ckks")

    with pytest.raises(KeyFileError, match="expected scheme 'paillier'; got 'ckks'"):
        load_paillier_client_bundle(tmp_path)
    with pytest.raises(KeyFileError, match="expected a coordinator bundle; got kind 'client'"):
        load_paillier_coordinator_bundle(keys / CLIENT_BUNDLE)


def test_cli_create_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"

    code = main(["keys", "create", "--scheme", "paillier", "--key-bits", "2048", "--out", str(out)])
    created = capsys.readouterr().out
    assert main(["keys", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    fingerprint = load_paillier_client_bundle(out).fingerprint.hex()
    assert code == 0
    assert fingerprint in created
    assert [b["kind"] for b in shown["bundles"]] == ["client", "coordinator"]
    assert {b["scheme"] for b in shown["bundles"]} == {"paillier"}
    assert {b["key_bits"] for b in shown["bundles"]} == {2048}
    assert {b["security_bits"] for b in shown["bundles"]} == {112}
    assert "mac_key" not in json.dumps(shown)
    assert main(["keys", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "n=2048 bits" in text
    assert "112-bit" in text


def test_cli_refuses_options_of_another_scheme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["keys", "create", "--scheme", "ckks", "--key-bits", "2048", "--out", str(tmp_path)])
        == 2
    )
    assert "--key-bits applies to --scheme paillier; got --scheme ckks" in capsys.readouterr().err
    assert (
        main(
            ["keys", "create", "--scheme", "paillier", "--scale-bits", "30", "--out", str(tmp_path)]
        )
        == 2
    )
    assert (
        main(
            ["keys", "create", "--scheme", "paillier", "--key-bits", "1024", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "error: key_bits must be >= 2048" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["keys", "create", "--scheme", "rot13", "--out", str(tmp_path)])
    assert "invalid choice: 'rot13' (choose from 'ckks', 'paillier')" in capsys.readouterr().err


# ---------------------------------------------------------------------- raw arithmetic
def test_crt_encryption_is_textbook_paillier(keys: Path) -> None:
    # Arrange: phe's key objects for the same n, p, q
    secret = load_paillier_client_bundle(keys)._secret
    public = phe.PaillierPublicKey(int(secret.public.n))
    private = phe.PaillierPrivateKey(public, int(secret.p), int(secret.q))
    m1, m2 = 2**2000 + 12345, 987654321

    # Act
    ours = secret.encrypt(m1)
    theirs = public.raw_encrypt(m2)
    phi = (secret.p - 1) * (secret.q - 1)

    # Assert: phe decrypts ours, we decrypt phe's, and they add up
    assert private.raw_decrypt(int(ours)) == m1
    assert secret.decrypt(gmpy2.mpz(theirs)) == m2
    assert secret.decrypt(secret.public.add(ours, gmpy2.mpz(theirs))) == m1 + m2
    # the obfuscator is an n-th residue mod n^2 (order divides phi(n)), as r^n is
    assert gmpy2.powmod(secret.obfuscator(), phi, secret.public.n2) == 1
    assert ours != secret.encrypt(m1)  # randomised


def test_untrusted_ciphertexts_are_validated_before_arithmetic(keys: Path) -> None:
    secret = load_paillier_client_bundle(keys)._secret
    public: PublicKey = secret.public
    w = public.ciphertext_bytes
    good = public.serialize([secret.encrypt(5)])

    assert public.parse(good, 1, "x")[0] == int.from_bytes(good, "big")
    with pytest.raises(CorruptPayloadError, match=f"1 ciphertexts of {w} bytes"):
        public.parse(good[:-1], 1, "x")
    with pytest.raises(CorruptPayloadError, match=r"in \(0, n\^2\); got 0"):
        public.parse(bytes(w), 1, "x")
    with pytest.raises(CorruptPayloadError, match="got a value >= n"):
        public.parse(b"\xff" * w, 1, "x")
    with pytest.raises(CorruptPayloadError, match="unit mod n"):
        public.parse(int(secret.p * 7).to_bytes(w, "big"), 1, "x")


def test_secret_key_refuses_bad_primes() -> None:
    with pytest.raises(ValueError, match="must differ"):
        SecretKey(1000003, 1000003)
    with pytest.raises(ValueError, match="primes"):
        SecretKey(1000001, 1000003)


# ---------------------------------------------------------------------- codec and sum
def test_encrypted_average_matches_the_plain_average(keys: Path) -> None:
    # Arrange
    c, s = codec(keys), summer(keys)
    models, weights = [model(1), model(2), model(3)], [5, 1, 30]

    # Act
    payloads = [c.encode(m, n) for m, n in zip(models, weights, strict=True)]
    for p in payloads:
        s.check(p, SHAPES)
    out = c.decode(s.sum(payloads), sum(weights), SHAPES)

    # Assert: within the quantisation step B / Q, dtypes and shapes kept
    step = c.update_bound / c.layout.levels
    for i, a in enumerate(out):
        want = sum(n * m[i].astype(np.float64) for m, n in zip(models, weights, strict=True))
        assert a.dtype == np.float32
        assert a.shape == SHAPES[i]
        assert np.max(np.abs(a - want / sum(weights))) <= step


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    n_clients=st.integers(min_value=1, max_value=MAX_CLIENTS),
)
@example(data=None, n_clients=MAX_CLIENTS)
def test_decrypted_aggregate_is_the_exact_integer_sum(
    keys: Path, data: st.DataObject | None, n_clients: int
) -> None:
    # Arrange: values in [-B, B] including the bound itself and negatives; integer weights
    # summing to at most the configured maximum; the example fills the headroom exactly
    bound = 2.0
    c = codec(keys, update_bound=bound, quantization_bits=16, max_total_weight=MAX_CLIENTS)
    s = summer(keys, quantization_bits=16, max_total_weight=MAX_CLIENTS)
    size = 3 * 4 + 4
    if data is None:
        updates = [np.full(size, bound * (1 if i % 2 else -1)) for i in range(n_clients)]
        weights = [1] * n_clients
    else:
        values = st.one_of(
            st.sampled_from([bound, -bound, 0.0]),
            st.floats(min_value=-bound, max_value=bound, allow_nan=False),
        )
        updates = [
            np.array(data.draw(st.lists(values, min_size=size, max_size=size)))
            for _ in range(n_clients)
        ]
        spare = MAX_CLIENTS - n_clients
        weights = [1 + data.draw(st.integers(0, spare)) for _ in range(n_clients)]
        while sum(weights) > MAX_CLIENTS:
            weights[weights.index(max(weights))] -= 1
    quantised = []
    for u in updates:
        q, specs = c.quantize([u[:12].reshape(3, 4), u[12:]])
        quantised.append(q)

    # Act
    payloads = [c.encode_quantized(q, specs, n) for q, n in zip(quantised, weights, strict=True)]
    sums, _ = c.decode_sum(s.sum(payloads), sum(weights), SHAPES)

    # Assert
    expected = sum(n * q for q, n in zip(quantised, weights, strict=True))
    assert sums.dtype == np.int64
    assert np.array_equal(sums, expected)
    for q, u in zip(quantised, updates, strict=True):
        assert np.all(q[u == bound] == c.layout.levels)
        assert np.all(q[u == -bound] == -c.layout.levels)


def test_stochastic_rounding_comes_from_the_injected_rng(keys: Path) -> None:
    a = codec(keys, rng=np.random.default_rng(7)).quantize(model(1))[0]
    b = codec(keys, rng=np.random.default_rng(7)).quantize(model(1))[0]
    other = codec(keys, rng=np.random.default_rng(8)).quantize(
        model(1),
    )[0]

    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)


def test_weights_and_totals_beyond_the_headroom_are_refused(keys: Path) -> None:
    c, s = codec(keys, max_total_weight=10), summer(keys, max_total_weight=10)
    payload = c.encode(model(1), 10)

    with pytest.raises(ConfigError, match=r"secure_aggregation\.max_total_weight 10"):
        c.encode(model(1), 11)
    with pytest.raises(ConfigError, match="positive integer"):
        c.encode(model(1), 2.5)
    with pytest.raises(CorruptPayloadError, match="max_total_weight 10 so that no slot"):
        c.decode(payload, 11, SHAPES)
    with pytest.raises(CorruptPayloadError, match="max_total_weight 10 contributions"):
        s.sum([payload] * 11)
    with pytest.raises(CorruptPayloadError, match="summand count must be <= the total weight 1"):
        c.decode(s.sum([c.encode(model(1), 1)] * 2), 1, SHAPES)


def test_values_beyond_the_bound_are_refused(keys: Path) -> None:
    with pytest.raises(ConfigError, match="update_bound 1"):
        codec(keys, update_bound=1.0).encode(model(1, scale=2.0), 1)
    with pytest.raises(ConfigError, match="finite"):
        codec(keys).encode([np.array([np.nan], np.float32)], 1)


def test_foreign_tampered_and_misconfigured_payloads_are_refused(
    keys: Path, foreign_keys: Path
) -> None:
    c, s = codec(keys), summer(keys)
    payload = c.encode(model(1), 3)
    flipped = [a.copy() for a in payload]
    flipped[1][10] ^= 1

    with pytest.raises(KeyMismatchError, match="another key set"):
        s.check(codec(foreign_keys).encode(model(1), 3))
    with pytest.raises(CorruptPayloadError, match="authentication tag"):
        s.check(flipped)
    # another layout (a client with other quantization_bits) fails authentication
    with pytest.raises(CorruptPayloadError, match=r"authentication tag|payload slots"):
        s.check(codec(keys, quantization_bits=20).encode(model(1), 3))
    with pytest.raises(ContributionError, match="KeyMismatchError") as info:
        s.sum([payload, codec(foreign_keys).encode(model(1), 3)])
    assert info.value.index == 1
    with pytest.raises(CorruptPayloadError, match="shapes must be"):
        s.check(payload, [(4, 3), (4,)])


def test_authentic_non_ciphertexts_are_refused_by_the_coordinator(keys: Path) -> None:
    c, s = codec(keys), summer(keys)
    payload = c.encode(model(1), 3)
    width = c._public.ciphertext_bytes
    zeros = reseal(c, payload, [bytes(payload[1].size)])
    shared = reseal(
        c, payload, [int(c._secret.q).to_bytes(width, "big") * (payload[1].size // width)]
    )

    with pytest.raises(CorruptPayloadError, match=r"ciphertext 0 must be in \(0, n\^2\)"):
        s.check(zeros)
    with pytest.raises(ContributionError, match="unit mod n") as info:
        s.sum([payload, shared])
    assert info.value.index == 1


def test_an_authentic_ciphertext_of_garbage_fails_the_clients_bounds_check(keys: Path) -> None:
    # Arrange: a key holder encrypts a random plaintext (what a flipped bit decrypts to)
    c, s = codec(keys), summer(keys)
    payload = c.encode(model(1), 3)
    rng = np.random.default_rng(3)
    garbage = [c._secret.encrypt(int(rng.integers(1, 2**62)) << 1900)]
    bad = reseal(c, payload, [c._public.serialize(garbage)])

    # Act / Assert: the coordinator cannot tell; every client refuses the aggregate
    agg = s.sum([bad, payload])
    with pytest.raises(CorruptPayloadError, match="a summed ciphertext is corrupt"):
        c.decode(agg, 6, SHAPES)


def test_the_coordinator_side_cannot_decrypt_or_hold_the_private_key(keys: Path) -> None:
    s = summer(keys)

    assert s.is_private() is False
    assert not hasattr(s._bundle, "_secret")
    with pytest.raises(KeyFileError, match="PaillierCoordinatorBundle"):
        PaillierSum(load_paillier_client_bundle(keys))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="PaillierClientBundle"):
        PaillierCodec(load_paillier_coordinator_bundle(keys))  # type: ignore[arg-type]


def test_layout_mac_key_binds_the_layout(keys: Path) -> None:
    bundle: PaillierClientBundle = load_paillier_client_bundle(keys)
    a, b = codec(keys).layout, codec(keys, max_total_weight=2**21).layout

    assert layout_mac_key(bundle._mac_key, a, 2048) != layout_mac_key(bundle._mac_key, b, 2048)
    assert layout_mac_key(bundle._mac_key, a, 2048) != bundle._mac_key


def test_process_pool_and_precomputed_obfuscators_give_the_same_sums(keys: Path) -> None:
    # Arrange: enough values for several ciphertexts (pool threshold 8)
    shapes = [(30, 40)]
    w = [np.random.default_rng(5).uniform(-1, 1, shapes[0]).astype(np.float32)]
    inline = codec(keys, workers=1, rng=np.random.default_rng(9))
    pooled = codec(keys, workers=2, rng=np.random.default_rng(9))
    try:
        # Act
        pooled.precompute(10)
        a = inline.encode(w, 2)
        b = pooled.encode(w, 2)  # uses the 10 precomputed obfuscators + fresh ones

        # Assert: different ciphertexts, identical decryptions either way
        assert a[1].tobytes() != b[1].tobytes()
        assert np.array_equal(
            inline.decode_sum(b, 2, shapes)[0], pooled.decode_sum(a, 2, shapes)[0]
        )
        assert len(pooled._stock) == 0
        # having encoded once, decoding starts drawing the next contribution's obfuscators
        assert sum(c for _, c in pooled._pending) == pooled.layout.plaintexts_for(1200)
        assert inline._pending == []  # no pool: nothing to prefetch
    finally:
        pooled.close()


# ---------------------------------------------------------------------- config and registry
def test_config_refuses_more_clients_than_the_headroom_allows() -> None:
    base = {"experiment": {"num_clients": 40, "clients_per_round": 20}}

    with pytest.raises(
        ConfigError,
        match=r"secure_aggregation.max_total_weight must be >= 20 \(experiment.clients_per_round",
    ):
        ExperimentConfig.from_mapping(
            {**base, "secure_aggregation": {"scheme": "paillier", "max_total_weight": 16}}
        )
    with pytest.raises(ConfigError, match=r"must be >= 40 \(experiment.num_clients"):
        ExperimentConfig.from_mapping(
            {
                **base,
                "privacy": {"mode": "local+user", "noise_multiplier": 1.0},
                "secure_aggregation": {"scheme": "paillier", "max_total_weight": 32},
            }
        )
    with pytest.raises(ConfigError, match=r"quantization_bits must be in \[2, 32\]; got 33"):
        ExperimentConfig.from_mapping(
            {"secure_aggregation": {"scheme": "paillier", "quantization_bits": 33}}
        )
    ok = ExperimentConfig.from_mapping(
        {**base, "secure_aggregation": {"scheme": "paillier", "max_total_weight": 20}}
    )
    assert ok.secure_aggregation.max_total_weight == 20


def test_total_weight_beyond_the_headroom_is_refused_before_the_first_round() -> None:
    # Arrange: 3 of 5 clients a round; the three largest hold 300 + 200 + 150 examples
    def cfg(max_total_weight: int, mode: str = "none") -> ExperimentConfig:
        privacy = {"mode": mode, "noise_multiplier": 1.0} if mode != "none" else {}
        return ExperimentConfig.from_mapping(
            {
                "experiment": {"num_clients": 5, "clients_per_round": 3},
                "privacy": privacy,
                "secure_aggregation": {"scheme": "paillier", "max_total_weight": max_total_weight},
            }
        )

    sizes = [100, 300, 150, 200, 50]

    # Act / Assert: the message names the setting, the value needed and why
    (problem,) = weight_problems(cfg(649), sizes)
    assert problem.startswith("secure_aggregation.max_total_weight must be >= 650")
    assert "experiment.clients_per_round = 3" in problem
    assert "10-bit headroom" in problem
    assert problem.endswith("got 649 (>= 650 costs 0 more bit(s) per slot)")
    (wider,) = weight_problems(cfg(500), sizes)
    assert "9-bit headroom" in wider
    assert "costs 1 more bit(s)" in wider
    assert weight_problems(cfg(650), sizes) == []
    # one example per contribution under user-level DP (the config check covers it)
    assert weight_problems(cfg(5, mode="local+user"), sizes) == []
    assert schemes_weight_problems(cfg(649), sizes) == [problem]
    assert schemes_weight_problems(ExperimentConfig(), sizes) == []


def test_preflight_refuses_a_headroom_the_simulated_clients_overflow(keys: Path) -> None:
    # Arrange: the quickstart's 10 digits clients hold 1,439 training examples together
    def cfg(max_total_weight: int) -> ExperimentConfig:
        return ExperimentConfig.from_mapping(
            {
                "secure_aggregation": {
                    "scheme": "paillier",
                    "key_dir": str(keys),
                    "max_total_weight": max_total_weight,
                }
            }
        )

    sizes = [len(load_client(cfg(1024), i).y_train) for i in range(10)]

    # Act / Assert: `fedai simulate` runs check_run before anything starts
    with pytest.raises(
        ConfigError, match=rf"max_total_weight must be >= {sum(sizes)}, .* got 1024"
    ):
        check_run(cfg(1024))
    assert check_run(cfg(2048)).client_sizes == {str(i): n for i, n in enumerate(sizes)}


def test_unknown_scheme_lists_the_registry() -> None:
    with pytest.raises(
        ConfigError, match="scheme must be one of 'none', 'ckks', 'paillier'; got 'rsa'"
    ):
        ExperimentConfig.from_mapping({"secure_aggregation": {"scheme": "rsa"}})


def test_factories_build_paillier_from_config(keys: Path) -> None:
    section = SecureAggregationSection(scheme="paillier", key_dir=str(keys), workers=1)

    c = client_codec(section)
    s = coordinator_sum(section)

    assert isinstance(c, PaillierCodec)
    assert isinstance(s, PaillierSum)
    assert c.decode(s.sum([c.encode(model(4), 2)]), 2, SHAPES)[0].shape == SHAPES[0]
    with pytest.raises(ConfigError, match="key_dir must name a key directory"):
        coordinator_sum(SecureAggregationSection(scheme="paillier"))


def test_the_sum_blames_the_odd_layout_out_not_the_later_payloads(keys: Path) -> None:
    # Arrange: the first payload records float64 arrays, the two others float32
    c, s = codec(keys), summer(keys)
    odd = c.encode([a.astype(np.float64) for a in model(1)], 1)
    usual = [c.encode(model(2), 1), c.encode(model(3), 1)]

    # Act / Assert: the majority layout wins; the first payload is the one left out
    with pytest.raises(ContributionError, match="must match the other payloads'") as info:
        s.sum([odd, *usual])
    assert info.value.index == 0
    assert c.decode(s.sum(usual), 2, SHAPES)[0].dtype == np.float32
