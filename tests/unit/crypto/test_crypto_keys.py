"""Key bundles and ``fedai keys`` (real TenSEAL contexts; keygen takes ~50 ms)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import tenseal as ts

from fedai.cli import main
from fedai.crypto import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    CkksSum,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.errors import ConfigError, InsecureParametersError, KeyFileError


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    create_keys(out)
    return out


def test_both_bundles_written_with_mode_0600(key_dir: Path) -> None:
    for name in (CLIENT_BUNDLE, COORDINATOR_BUNDLE):
        assert (key_dir / name).stat().st_mode & 0o777 == 0o600


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run under umask 022, so a 0700 directory proves fedai forced the mode."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_created_key_directory_is_0700(tmp_path: Path) -> None:
    out = tmp_path / "missing-parent" / "keys"

    create_keys(out)

    assert out.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "missing-parent").stat().st_mode & 0o777 == 0o755


@pytest.mark.usefixtures("umask_022")
def test_cli_created_key_directory_is_0700(tmp_path: Path) -> None:
    out = tmp_path / "k"

    assert main(["keys", "create", "--out", str(out)]) == 0

    assert out.stat().st_mode & 0o777 == 0o700


@pytest.mark.usefixtures("umask_022")
def test_existing_key_directory_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "k"
    out.mkdir(mode=0o750)

    create_keys(out)

    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / CLIENT_BUNDLE).stat().st_mode & 0o777 == 0o600


def test_coordinator_bundle_holds_no_key_at_all(key_dir: Path) -> None:
    bundle = load_coordinator_bundle(key_dir)
    ctx = bundle._context

    assert bundle.is_private() is False
    assert ctx.is_private() is False
    assert ctx.has_secret_key() is False
    assert ctx.has_relin_keys() is False
    assert ctx.has_galois_keys() is False
    assert (key_dir / COORDINATOR_BUNDLE).stat().st_size < 4096  # parameters only
    with pytest.raises(ValueError, match="not supported for symmetric"):
        ctx.has_public_key()  # a symmetric key set has no public key anywhere
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(ctx, [1.0])  # the coordinator cannot even encrypt


def test_default_key_set_is_symmetric_and_public_key_sets_still_work(tmp_path: Path) -> None:
    sym = create_keys(tmp_path / "sym")
    pk = create_keys(tmp_path / "pk", encryption="public-key")
    assert pk.encryption == "public-key"

    assert sym.encryption == "symmetric"
    assert load_client_bundle(tmp_path / "sym").encryption == "symmetric"
    assert load_client_bundle(tmp_path / "pk").encryption == "public-key"
    assert load_coordinator_bundle(tmp_path / "pk")._context.has_public_key() is False
    for d in ("sym", "pk"):
        client = load_client_bundle(tmp_path / d)
        value = ts.ckks_vector(client._context, [1.5, -2.0]).decrypt()
        assert value == pytest.approx([1.5, -2.0], abs=1e-6)


def test_bundle_written_before_the_encryption_field_loads_as_public_key(tmp_path: Path) -> None:
    create_keys(tmp_path, encryption="public-key")
    meta, ctx_bytes = _split(tmp_path / CLIENT_BUNDLE)
    del meta["encryption"]
    _rewrite(tmp_path / CLIENT_BUNDLE, meta, ctx_bytes)

    assert load_client_bundle(tmp_path).encryption == "public-key"


def test_unknown_encryption_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'symmetric' or 'public-key'; got 'rot13'"):
        create_keys(tmp_path, encryption="rot13")  # type: ignore[arg-type]


def test_client_bundle_is_private_and_fingerprints_agree(key_dir: Path) -> None:
    client = load_client_bundle(key_dir / CLIENT_BUNDLE)
    coordinator = load_coordinator_bundle(key_dir / COORDINATOR_BUNDLE)

    assert client.is_private() is True
    assert client.fingerprint == coordinator.fingerprint
    assert len(client.fingerprint) == 32
    assert client.to_public().is_private() is False
    assert client.to_public().fingerprint == client.fingerprint


def test_serialize_defaults_to_the_keyless_form(key_dir: Path) -> None:
    client = load_client_bundle(key_dir)

    public = client.serialize()
    private = client.serialize(include_secret_key=True)

    assert len(public) < 4096 < len(private)
    assert b'"kind": "coordinator"' in public


def test_two_key_sets_have_different_fingerprints(tmp_path: Path, key_dir: Path) -> None:
    other = create_keys(tmp_path)

    assert other.fingerprint != load_client_bundle(key_dir).fingerprint


def test_coordinator_refuses_a_client_bundle(key_dir: Path) -> None:
    with pytest.raises(KeyFileError, match="keyless CoordinatorBundle; got ClientBundle"):
        CkksSum(load_client_bundle(key_dir))  # type: ignore[arg-type]


def test_insecure_parameters_refused_unless_forced(tmp_path: Path) -> None:
    with pytest.raises(InsecureParametersError, match="poly_modulus_degree must be >= 8192"):
        create_keys(tmp_path / "a", poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 20, 40))

    forced = create_keys(
        tmp_path / "b",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(40, 20, 40),
        global_scale=2.0**20,
        force=True,
    )

    assert forced.params.slots == 2048
    assert json.loads(_meta(tmp_path / "b" / CLIENT_BUNDLE))["forced"] is True


def test_modulus_beyond_the_standard_table_refused_even_when_forced(tmp_path: Path) -> None:
    with pytest.raises(InsecureParametersError, match=r"must be <= 218.*got 240"):
        create_keys(tmp_path, coeff_mod_bit_sizes=(60, 60, 60, 60))
    with pytest.raises(InsecureParametersError, match="SEAL refuses"):
        create_keys(tmp_path, coeff_mod_bit_sizes=(60, 60, 60, 60), force=True)
    assert not (tmp_path / CLIENT_BUNDLE).exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"poly_modulus_degree": 8000}, "power of two"),
        ({"coeff_mod_bit_sizes": (60,)}, ">= 2 primes"),
        ({"coeff_mod_bit_sizes": (61, 40, 60)}, r"\[17, 60\]"),
        ({"global_scale": 2.0**10}, ">= 2\\*\\*20"),
        ({"coeff_mod_bit_sizes": (30, 60)}, "no headroom"),
        ({"scheme": "rot13"}, "keys scheme must be one of 'ckks', 'paillier'; got 'rot13'"),
    ],
)
def test_malformed_parameters_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        create_keys(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_existing_key_set_is_not_overwritten_silently(tmp_path: Path) -> None:
    first = create_keys(tmp_path)

    with pytest.raises(KeyFileError, match="expected no existing key set"):
        create_keys(tmp_path)
    second = create_keys(tmp_path, overwrite=True)

    assert second.fingerprint != first.fingerprint
    assert load_client_bundle(tmp_path).fingerprint == second.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLIENT_BUNDLE, COORDINATOR_BUNDLE]


def _meta(path: Path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack_from(">I", data, 8)
    return data[12 : 12 + n]


def _rewrite(path: Path, meta: dict[str, object], ctx_bytes: bytes) -> None:
    text = json.dumps(meta).encode()
    path.write_bytes(b"FEDAIKEY" + struct.pack(">I", len(text)) + text + ctx_bytes)


def _split(path: Path) -> tuple[dict[str, object], bytes]:
    meta = _meta(path)
    return json.loads(meta), path.read_bytes()[12 + len(meta) :]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"client\.bundle: expected a readable client bundle"):
        load_client_bundle(tmp_path)


def test_random_file(tmp_path: Path) -> None:
    (tmp_path / CLIENT_BUNDLE).write_bytes(os.urandom(300))

    with pytest.raises(KeyFileError, match="expected a fedai key bundle"):
        load_client_bundle(tmp_path)


def test_truncated_file(tmp_path: Path, key_dir: Path) -> None:
    data = (key_dir / CLIENT_BUNDLE).read_bytes()
    (tmp_path / CLIENT_BUNDLE).write_bytes(data[: len(data) // 2])

    with pytest.raises(KeyFileError, match="SHA-256"):
        load_client_bundle(tmp_path)
    (tmp_path / CLIENT_BUNDLE).write_bytes(data[:30])
    with pytest.raises(KeyFileError, match="truncated"):
        load_client_bundle(tmp_path)


def test_wrong_kind_is_named(key_dir: Path) -> None:
    with pytest.raises(KeyFileError, match="expected a coordinator bundle; got kind 'client'"):
        load_coordinator_bundle(key_dir / CLIENT_BUNDLE)
    with pytest.raises(KeyFileError, match="expected a client bundle; got kind 'coordinator'"):
        load_client_bundle(key_dir / COORDINATOR_BUNDLE)


def test_future_format_is_named(tmp_path: Path, key_dir: Path) -> None:
    meta, ctx_bytes = _split(key_dir / COORDINATOR_BUNDLE)
    _rewrite(tmp_path / COORDINATOR_BUNDLE, {**meta, "format": 7}, ctx_bytes)

    with pytest.raises(KeyFileError, match="expected bundle format 1; got 7"):
        load_coordinator_bundle(tmp_path)


def test_secret_key_smuggled_into_a_coordinator_bundle_is_refused(
    tmp_path: Path, key_dir: Path
) -> None:
    meta, ctx_bytes = _split(key_dir / CLIENT_BUNDLE)
    meta = {**meta, "kind": "coordinator"}
    _rewrite(tmp_path / COORDINATOR_BUNDLE, meta, ctx_bytes)

    with pytest.raises(KeyFileError, match="without a secret key; got one holding"):
        load_coordinator_bundle(tmp_path)


@pytest.mark.parametrize(
    ("encryption", "which"), [("symmetric", "secret key"), ("public-key", "public key")]
)
def test_fingerprint_not_matching_the_key_is_refused(
    tmp_path: Path, encryption: Literal["symmetric", "public-key"], which: str
) -> None:
    create_keys(tmp_path / "src", encryption=encryption)
    meta, ctx_bytes = _split(tmp_path / "src" / CLIENT_BUNDLE)
    meta = {**meta, "fingerprint": hashlib.sha256(b"other").hexdigest()}
    _rewrite(tmp_path / CLIENT_BUNDLE, meta, ctx_bytes)

    with pytest.raises(KeyFileError, match=f"{which} to match fingerprint"):
        load_client_bundle(tmp_path)


def test_client_bundle_with_a_swapped_secret_key_is_refused(tmp_path: Path, key_dir: Path) -> None:
    # Same parameters, another secret key: only the fingerprint can tell.
    create_keys(tmp_path / "other")
    meta, _ = _split(key_dir / CLIENT_BUNDLE)
    _, other_ctx = _split(tmp_path / "other" / CLIENT_BUNDLE)
    meta = {**meta, "context_sha256": hashlib.sha256(other_ctx).hexdigest()}
    _rewrite(tmp_path / CLIENT_BUNDLE, meta, other_ctx)

    with pytest.raises(KeyFileError, match="secret key to match fingerprint"):
        load_client_bundle(tmp_path)


def test_context_swapped_for_another_is_refused(tmp_path: Path, key_dir: Path) -> None:
    other_dir = tmp_path / "other"
    create_keys(other_dir, poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 40, 40, 40, 60))
    meta, _ = _split(key_dir / COORDINATOR_BUNDLE)
    _, other_ctx = _split(other_dir / COORDINATOR_BUNDLE)
    meta = {**meta, "context_sha256": hashlib.sha256(other_ctx).hexdigest()}
    _rewrite(tmp_path / COORDINATOR_BUNDLE, meta, other_ctx)

    with pytest.raises(KeyFileError, match="parameters recorded at creation"):
        load_coordinator_bundle(tmp_path)


def test_cli_create_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"

    assert main(["keys", "create", "--scheme", "ckks", "--out", str(out)]) == 0
    created = capsys.readouterr().out
    assert main(["keys", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    fingerprint = load_client_bundle(out).fingerprint.hex()
    assert fingerprint in created
    assert [b["kind"] for b in shown["bundles"]] == ["client", "coordinator"]
    assert {b["fingerprint"] for b in shown["bundles"]} == {fingerprint}
    assert shown["bundles"][0]["mode"] == "0600"
    assert shown["bundles"][0]["secure_128"] is True
    assert "mac_key" not in json.dumps(shown)
    assert main(["keys", "show", str(out)]) == 0
    assert fingerprint in capsys.readouterr().out


def test_cli_errors_have_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"

    insecure = main(
        [
            "keys",
            "create",
            "--out",
            str(out),
            "--poly-modulus-degree",
            "4096",
            "--coeff-mod-bit-sizes",
            "40,20,40",
            "--scale-bits",
            "20",
        ]
    )
    assert insecure == 2  # bad input: a usage error, reported without the class name
    err = capsys.readouterr().err
    assert "fedai keys create: error: poly_modulus_degree must be >= 8192" in err
    assert "InsecureParametersError" not in err
    assert main(["keys", "create", "--out", str(out)]) == 0
    assert main(["keys", "create", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["keys", "show", str(tmp_path / "empty")]) == 2
