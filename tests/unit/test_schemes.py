"""The scheme registry: one entry per scheme, and a contract every secure scheme meets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedai.cli import build_parser
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.crypto import read_bundle_info, scheme_of_key_dir
from fedai.crypto.keys import create_keys
from fedai.errors import ConfigError, CorruptPayloadError, KeyMismatchError
from fedai.policy import SCHEMES
from fedai.schemes import (
    REGISTRY,
    client_codec,
    coordinator_sum,
    get_scheme,
    key_scheme_names,
    scheme_names,
)

SECURE = [n for n in REGISTRY if n != "none"]
#: Fast key parameters per scheme (tests only).
FAST_KEYS: dict[str, dict[str, Any]] = {
    "ckks": {},
    "paillier": {"key_bits": 2048},
}
SHAPES = [(5, 3), (3,)]


def test_registry_names_specs_and_codes_are_consistent() -> None:
    specs = [get_scheme(n) for n in scheme_names()]
    codes = [s.wire_code for s in specs if s.wire_code is not None]
    flags = [o.flag for s in specs for o in s.key_options]

    assert scheme_names()[0] == "none"
    assert [s.name for s in specs] == list(REGISTRY)
    assert len(codes) == len(set(codes)) == len(SECURE)
    assert all(1 <= c <= 255 for c in codes)
    assert len(flags) == len(set(flags))
    assert key_scheme_names() == tuple(SECURE)
    assert set(FAST_KEYS) == set(SECURE)  # a new scheme needs fast test keys here


def test_config_policy_and_cli_take_their_schemes_from_the_registry() -> None:
    parser = build_parser()
    keys_parser = parser._subparsers._group_actions[0].choices["keys"]  # type: ignore[union-attr]
    create = keys_parser._subparsers._group_actions[0].choices["create"]
    scheme_action = next(a for a in create._actions if a.dest == "scheme")

    assert scheme_names() == SCHEMES
    assert tuple(scheme_action.choices) == key_scheme_names()
    for name in scheme_names():
        assert (
            ExperimentConfig.from_mapping(
                {"secure_aggregation": {"scheme": name}}
            ).secure_aggregation.scheme
            == name
        )
    with pytest.raises(ConfigError, match="one of " + ", ".join(repr(n) for n in REGISTRY)):
        ExperimentConfig.from_mapping({"secure_aggregation": {"scheme": "rot13"}})


@pytest.fixture(scope="module", params=SECURE)
def scheme_keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    name = request.param
    key_dir = tmp_path_factory.mktemp(f"{name}-keys")
    foreign = tmp_path_factory.mktemp(f"{name}-foreign")
    create_keys(key_dir, scheme=name, **FAST_KEYS[name])
    create_keys(foreign, scheme=name, **FAST_KEYS[name])
    return name, key_dir, foreign


def section(name: str, key_dir: Path) -> SecureAggregationSection:
    return SecureAggregationSection(scheme=name, key_dir=str(key_dir), workers=1)


def test_contract_key_set_and_description(scheme_keys: tuple[str, Path, Path]) -> None:
    name, key_dir, _ = scheme_keys
    spec = get_scheme(name)
    assert spec.describe_keys is not None

    infos = [read_bundle_info(key_dir / f) for f in ("client.bundle", "coordinator.bundle")]
    rows = [spec.describe_keys(i) for i in infos]

    assert scheme_of_key_dir(key_dir) == name
    assert {i.scheme for i in infos} == {name}
    assert len({i.fingerprint for i in infos}) == 1
    assert all(i.mode == 0o600 for i in infos)
    assert all(isinstance(r["summary"], str) and isinstance(r["security"], str) for r in rows)
    assert all("mac_key" not in str(r) for r in rows)


def test_contract_round_trip_and_key_separation(scheme_keys: tuple[str, Path, Path]) -> None:
    # Arrange
    name, key_dir, foreign_dir = scheme_keys
    codec = client_codec(section(name, key_dir))
    summer = coordinator_sum(section(name, key_dir))
    foreign = client_codec(section(name, foreign_dir))
    rng = np.random.default_rng(0)
    models = [[rng.uniform(-1, 1, s).astype(np.float32) for s in SHAPES] for _ in range(3)]
    weights = [2.0, 3.0, 5.0]

    # Act
    payloads = [codec.encode(m, n) for m, n in zip(models, weights, strict=True)]
    for p in payloads:
        summer.check(p, SHAPES)
    out = codec.decode(summer.sum(payloads), sum(weights), SHAPES)

    # Assert: the average (within 1e-4), nothing plaintext on the coordinator's side
    for i, a in enumerate(out):
        want = sum(n * m[i] for m, n in zip(models, weights, strict=True)) / sum(weights)
        assert np.max(np.abs(a - want)) < 1e-4
    assert codec.name == summer.name == name
    assert summer.is_private() is False  # type: ignore[attr-defined]
    assert all(a.dtype == np.uint8 for a in payloads[0])
    with pytest.raises(KeyMismatchError):
        summer.check(foreign.encode(models[0], 1.0), SHAPES)
    with pytest.raises(CorruptPayloadError):
        summer.check([a[: a.size // 2] for a in payloads[0]], SHAPES)
    with pytest.raises(CorruptPayloadError):
        summer.check([], SHAPES)
