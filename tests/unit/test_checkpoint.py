"""The checkpoint and final-aggregate files: round trip, corruption, foreign files, configs."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedai.aggregation import PlainCodec
from fedai.checkpoint import (
    Checkpoint,
    FinalAggregate,
    config_hash,
    payload_fingerprint,
    write_container,
    write_model,
)
from fedai.config import ExperimentConfig
from fedai.errors import CheckpointError, CorruptPayloadError
from fedai.models import ModelSpec, build_model, get_weights, load_model

SPEC = ModelSpec(name="logreg", input_shape=(4,), num_classes=3)
SHAPES = [(3, 4), (3,)]
FINGERPRINT = bytes(range(32))


def envelope_like(fingerprint: bytes = FINGERPRINT, size: int = 100) -> np.ndarray:
    """A uint8 array that starts like a fedai envelope header naming ``fingerprint``."""
    head = b"FEDAIENC" + b"\x00\x01\x01\x02" + fingerprint
    return np.frombuffer(head + bytes(size), dtype=np.uint8).copy()


def config(**experiment: Any) -> dict[str, Any]:
    return ExperimentConfig.from_mapping(
        {"experiment": {"rounds": 4, "num_clients": 3, "clients_per_round": 3, **experiment}}
    ).to_dict()


def checkpoint(**changes: Any) -> Checkpoint:
    rng = np.random.default_rng(7)
    args: dict[str, Any] = {
        "run_id": "0123456789abcdef",
        "round": 2,
        "config": config(),
        "spec": SPEC.to_dict(),
        "shapes": SHAPES,
        "model": [envelope_like(), np.arange(300, dtype=np.uint8)],
        "model_weight": 1437.0,
        "state": [rng.standard_normal(s) for s in SHAPES],
        "key_fingerprint": FINGERPRINT.hex(),
        "records": [
            {"round": 1, "accuracy": 0.5, "loss": 1.0, "seconds": 0.1, "trained": ["0", "1"]},
            {"round": 2, "accuracy": None, "loss": None, "seconds": 0.2, "status": "failed"},
        ],
        "clients": {"0": {"num_train": 10, "num_test": 2, "exhausted": ""}},
        "excluded": {"node 7": "client '9': input shape 5 differs"},
        "privacy_reports": {"0": {"epsilon": 1.5, "history": [[1.0, 0.1, 10]]}},
        "seconds": 3.25,
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    args.update(changes)
    return Checkpoint(**args)


# ---------------------------------------------------------------------- round trip
def test_a_checkpoint_round_trips_bit_for_bit_with_owner_only_modes(tmp_path: Path) -> None:
    # Arrange
    ckpt = checkpoint()
    # Act
    path = ckpt.save(tmp_path)
    back = Checkpoint.find(tmp_path)
    # Assert
    assert path == tmp_path / "checkpoint" / "checkpoint.npz"
    assert back is not None
    for name in ("run_id", "round", "config", "config_hash", "spec", "shapes", "model_weight"):
        assert getattr(back, name) == getattr(ckpt, name), name
    for name in ("key_fingerprint", "records", "clients", "excluded", "privacy_reports"):
        assert getattr(back, name) == getattr(ckpt, name), name
    assert (back.seconds, back.started_at) == (3.25, ckpt.started_at)
    assert back.model is not None
    assert ckpt.model is not None
    assert back.state is not None
    assert ckpt.state is not None
    for a, b in zip([*ckpt.model, *ckpt.state], [*back.model, *back.state], strict=True):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_checkpoint_before_the_first_model_has_none(tmp_path: Path) -> None:
    ckpt = checkpoint(round=0, model=None, state=None, records=[], model_weight=0.0)
    ckpt.save(tmp_path)
    back = Checkpoint.find(tmp_path)
    assert back is not None
    assert (back.round, back.model, back.state, back.records) == (0, None, None, [])


def test_a_directory_without_a_checkpoint_has_none(tmp_path: Path) -> None:
    assert Checkpoint.find(tmp_path) is None


def test_saving_again_replaces_the_checkpoint(tmp_path: Path) -> None:
    checkpoint().save(tmp_path)
    records = [*checkpoint().records, {"round": 3, "accuracy": 0.7, "loss": 0.5, "seconds": 0.3}]
    checkpoint(round=3, records=records).save(tmp_path)
    back = Checkpoint.find(tmp_path)
    assert back is not None
    assert back.round == 3
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["checkpoint.npz"]


# ---------------------------------------------------------------------- corrupt or foreign
def _flip_byte(raw: bytes) -> bytes:
    mid = len(raw) // 2
    return raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1 :]


def _foreign_npz(_raw: bytes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, weights=np.ones(3))
    return buf.getvalue()


def _bare_npy(_raw: bytes) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ones(3))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "cannot be read as one"),
        (lambda raw: b"", "cannot be read as one"),
        (lambda raw: bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), None),
        (_flip_byte, None),
        (_foreign_npz, "must hold a 'meta' byte array"),
        (_bare_npy, "bare array"),
    ],
    ids=["truncated", "empty", "random", "flipped-byte", "foreign-npz", "bare-npy"],
)
def test_a_corrupt_or_foreign_checkpoint_is_a_typed_error_naming_the_file(
    tmp_path: Path, mangle: Any, message: str | None
) -> None:
    # Arrange
    path = checkpoint().save(tmp_path)
    path.write_bytes(mangle(path.read_bytes()))
    # Act / Assert
    with pytest.raises(CheckpointError, match=message) as info:
        Checkpoint.find(tmp_path)
    assert str(path) in str(info.value)


def test_another_format_or_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint" / "checkpoint.npz"
    write_container(path, {"format": "fedai.checkpoint", "version": 99}, {})
    with pytest.raises(CheckpointError, match=r"version 1; got 'fedai\.checkpoint' version 99"):
        Checkpoint.load(path)
    write_container(path, {"format": "something-else", "version": 1}, {})
    with pytest.raises(CheckpointError, match="got 'something-else'"):
        Checkpoint.load(path)


def test_arrays_that_do_not_match_the_digest_are_refused(tmp_path: Path) -> None:
    # Arrange: a valid container whose model array was swapped after the digest was made
    path = checkpoint().save(tmp_path)
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    members["model_1"] = members["model_1"] + 1
    buf = io.BytesIO()
    np.savez(buf, **members)
    path.write_bytes(buf.getvalue())
    # Act / Assert
    with pytest.raises(CheckpointError, match="must match the recorded SHA-256"):
        Checkpoint.load(path)


def test_missing_and_mistyped_fields_are_all_named_at_once(tmp_path: Path) -> None:
    path = checkpoint().save(tmp_path)
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    meta = json.loads(members.pop("meta").tobytes())
    meta.pop("digest")
    del meta["round"]
    meta["seconds"] = "fast"
    write_container(path, meta, members)
    with pytest.raises(CheckpointError, match=r"round must be int.*seconds must be float"):
        Checkpoint.load(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clients", {"0": "exhausted"}, r"clients\['0'\] must be an object"),
        ("excluded", {"node 1": 5}, "excluded must map nodes to reasons"),
        ("privacy_reports", {"0": {"history": []}}, r"privacy_reports\['0'\] must be"),
        ("privacy_reports", {"0": {"epsilon": -1.0}}, "epsilon >= 0"),
    ],
)
def test_per_client_views_of_the_wrong_shape_are_refused(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    path = checkpoint(**{field: value}).save(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.load(path)


def test_a_zip_with_a_bad_crc_is_refused(tmp_path: Path) -> None:
    # Arrange: damage a stored member's bytes but keep the archive structure
    path = checkpoint().save(tmp_path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model_1.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + info.file_size - 1] ^= 0x01
    path.write_bytes(bytes(raw))
    # Act / Assert
    with pytest.raises(CheckpointError, match=str(path)):
        Checkpoint.load(path)


# ---------------------------------------------------------------------- configs
def test_a_checkpoint_of_another_config_is_refused_naming_the_settings() -> None:
    ckpt = checkpoint()
    with pytest.raises(CheckpointError, match=r"experiment\.rounds: 4 -> 5") as info:
        ckpt.check_config(config(rounds=5), where="DIR/checkpoint/checkpoint.npz")
    assert "DIR/checkpoint/checkpoint.npz" in str(info.value)
    assert ckpt.run_id in str(info.value)


def test_the_same_config_is_accepted_even_with_another_key_dir_or_worker_count() -> None:
    ckpt = checkpoint()
    moved = config()
    moved["secure_aggregation"]["key_dir"] = "/elsewhere/keys"
    moved["secure_aggregation"]["workers"] = 3
    ckpt.check_config(config())  # Act / Assert: no error
    ckpt.check_config(moved)
    assert config_hash(moved) == config_hash(config())
    assert config_hash(config(seed=1)) != config_hash(config())


def test_a_config_that_does_not_match_its_stored_hash_is_refused(tmp_path: Path) -> None:
    path = checkpoint(config_hash="0" * 64).save(tmp_path)
    with pytest.raises(CheckpointError, match="config_hash must match its config"):
        Checkpoint.load(path)


# ---------------------------------------------------------------------- final aggregate
def plain_aggregate() -> tuple[FinalAggregate, list[np.ndarray]]:
    weights = get_weights(build_model(SPEC, seed=3))
    codec = PlainCodec(round_decimals=6)
    payload = [
        a + b for a, b in zip(codec.encode(weights, 5.0), codec.encode(weights, 2.0), strict=True)
    ]
    aggregate = FinalAggregate(
        run_id="feedface",
        round=4,
        scheme="none",
        secure_aggregation=config()["secure_aggregation"],
        spec=SPEC.to_dict(),
        shapes=SHAPES,
        total_weight=7.0,
        payload=payload,
    )
    return aggregate, codec.decode(payload, 7.0, SHAPES)


def test_the_final_aggregate_round_trips_and_decodes_to_model_pt(tmp_path: Path) -> None:
    # Arrange
    aggregate, expected = plain_aggregate()
    aggregate.save(tmp_path)
    # Act
    back = FinalAggregate.load(tmp_path)
    path = write_model(tmp_path, out_dir=tmp_path / "out")
    # Assert
    assert (back.run_id, back.round, back.total_weight, back.shapes) == ("feedface", 4, 7.0, SHAPES)
    assert "key_dir" not in back.secure_aggregation
    model, spec = load_model(path)
    assert spec == SPEC
    for got, want in zip(model.state_dict().values(), expected, strict=True):
        assert torch.equal(got, torch.from_numpy(want))
    assert stat.S_IMODE(FinalAggregate.path_in(tmp_path).stat().st_mode) == 0o600


def test_a_final_aggregate_whose_payload_names_another_key_set_is_refused(tmp_path: Path) -> None:
    aggregate, _ = plain_aggregate()
    aggregate.scheme = "ckks"
    aggregate.payload = [envelope_like(bytes(32))]
    aggregate.key_fingerprint = FINGERPRINT.hex()
    aggregate.save(tmp_path)
    with pytest.raises(CheckpointError, match="payload's key fingerprint must be"):
        FinalAggregate.load(tmp_path)


def test_an_aggregate_out_of_bounds_fails_decoding_not_silently(tmp_path: Path) -> None:
    aggregate, _ = plain_aggregate()
    aggregate.payload = [a * 1e9 for a in aggregate.payload]
    aggregate.save(tmp_path)
    with pytest.raises(CorruptPayloadError, match="within"):
        write_model(tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_payload_fingerprint_reads_the_envelope_header_only() -> None:
    assert payload_fingerprint([envelope_like()]) == FINGERPRINT.hex()
    assert payload_fingerprint([np.ones(3)]) == ""
    assert payload_fingerprint(None) == ""
    assert payload_fingerprint([np.zeros(10, dtype=np.uint8)]) == ""
