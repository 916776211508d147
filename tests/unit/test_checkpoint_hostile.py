"""``fedai model decrypt`` reads a directory the coordinator wrote: untrusted for the key holder.

Every hostile run directory below must end in a typed error naming the thing, with nothing
of the key holder's overwritten and no allocation the file's real size does not back.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedai.schemes
from fedai.aggregation import PlainCodec
from fedai.checkpoint import Checkpoint, FinalAggregate, write_model
from fedai.config import ExperimentConfig, SecureAggregationSection
from fedai.errors import CheckpointError, ConfigError, FedAIError
from fedai.models import ModelSpec, build_model, get_weights

SPEC = ModelSpec(name="logreg", input_shape=(4,), num_classes=3)
SHAPES = [(3, 4), (3,)]


def _section() -> dict[str, Any]:
    return ExperimentConfig().to_dict()["secure_aggregation"]


def aggregate(**changes: Any) -> FinalAggregate:
    weights = get_weights(build_model(SPEC, seed=3))
    args: dict[str, Any] = {
        "run_id": "feedface",
        "round": 4,
        "scheme": "none",
        "secure_aggregation": _section(),
        "spec": SPEC.to_dict(),
        "shapes": SHAPES,
        "total_weight": 7.0,
        "payload": PlainCodec(round_decimals=6).encode(weights, 7.0),
    }
    args.update(changes)
    return FinalAggregate(**args)


def _rezip(path: Path, *, compression: int = zipfile.ZIP_STORED, replace: Any = None) -> None:
    """Rewrite the npz at ``path`` member by member (``replace``: name -> new bytes)."""
    with zipfile.ZipFile(path) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    members.update(replace or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------------- writing model.pt
@pytest.mark.parametrize("name", ["model.pt", "model.json"])
def test_a_planted_symlink_in_the_run_dir_is_not_written_through(tmp_path: Path, name: str) -> None:
    # Arrange: the coordinator's run dir links model.pt (or model.json) to a holder's file
    run = tmp_path / "run"
    aggregate().save(run)
    victim = tmp_path / "authorized_keys"
    victim.write_text("precious\n")
    (run / name).symlink_to(victim)

    # Act / Assert
    with pytest.raises(CheckpointError, match=rf"{name}.* must not be a symbolic link"):
        write_model(run)
    assert victim.read_text() == "precious\n"


def test_a_spec_too_large_to_build_is_a_typed_error_before_any_allocation(tmp_path: Path) -> None:
    # Arrange: an MLP of 10^7 x 10^7 weights (400 TB) with matching shapes, tiny payload
    spec = ModelSpec(name="mlp", input_shape=(10**7,), num_classes=2, hidden=10**7)
    shapes = [(10**7, 10**7), (10**7,), (10**7, 10**7), (10**7,), (2, 10**7), (2,)]
    aggregate(spec=spec.to_dict(), shapes=shapes).save(tmp_path)

    # Act / Assert: not the allocator's RuntimeError (or the OOM killer)
    with pytest.raises(FedAIError, match="shape"):
        write_model(tmp_path)


def test_a_spec_with_negative_sizes_is_a_typed_error(tmp_path: Path) -> None:
    spec = {"name": "logreg", "input_shape": [-4], "num_classes": 3, "hidden": 8}
    aggregate(spec=spec).save(tmp_path)
    with pytest.raises(CheckpointError, match="spec"):
        write_model(tmp_path)


# ---------------------------------------------------------------------- reading the file
def test_an_array_header_larger_than_the_file_is_refused_before_allocating(tmp_path: Path) -> None:
    # Arrange: payload_0 declares 2^50 float64 values (8 PiB) and carries 16 bytes
    path = aggregate().save(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**50,)}
    )
    _rezip(path, replace={"payload_0.npy": header.getvalue() + bytes(16)})

    # Act / Assert: a CheckpointError naming the file, not a MemoryError
    with pytest.raises(CheckpointError, match=r"final-aggregate\.npz.*payload_0"):
        FinalAggregate.load(tmp_path)


def test_compressed_members_are_refused(tmp_path: Path) -> None:
    # fedai writes stored (uncompressed) members; a deflated one could be a zip bomb.
    path = aggregate().save(tmp_path)
    _rezip(path, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"final-aggregate\.npz.*uncompressed"):
        FinalAggregate.load(tmp_path)


def test_a_checkpoint_with_compressed_members_is_refused_too(tmp_path: Path) -> None:
    ckpt = Checkpoint(
        run_id="0123456789abcdef",
        round=0,
        config=ExperimentConfig().to_dict(),
        spec=SPEC.to_dict(),
        shapes=SHAPES,
    )
    path = ckpt.save(tmp_path)
    assert Checkpoint.load(path).run_id == "0123456789abcdef"
    _rezip(path, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="uncompressed"):
        Checkpoint.load(path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"run_id": "feed\x1b]0;owned\x07\x1b[2J"}, "run_id"),
        ({"run_id": "x" * 65}, "run_id"),
        ({"scheme": "ckks\x1b[2J"}, "scheme"),
        ({"scheme": "rot13"}, "scheme"),
    ],
)
def test_labels_the_cli_prints_must_be_short_and_printable(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    # The run id and scheme reach the key holder's terminal; escape sequences must not.
    aggregate(**changes).save(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{field} must be"):
        FinalAggregate.load(tmp_path)


def test_a_checkpoint_run_id_clients_would_refuse_is_refused_on_load(tmp_path: Path) -> None:
    ckpt = Checkpoint(
        run_id="a\nb",
        round=0,
        config=ExperimentConfig().to_dict(),
        spec=SPEC.to_dict(),
        shapes=SHAPES,
    )
    path = ckpt.save(tmp_path)
    with pytest.raises(CheckpointError, match="run_id must be"):
        Checkpoint.load(path)


# ---------------------------------------------------------------------- stored settings
def test_mistyped_stored_settings_are_a_config_error(tmp_path: Path) -> None:
    aggregate(secure_aggregation={**_section(), "update_bound": "huge"}).save(tmp_path)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        write_model(tmp_path)


def test_the_files_worker_count_does_not_choose_the_holders_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the coordinator's file asks for 256 Paillier worker processes
    seen: list[SecureAggregationSection] = []

    class Codec:
        def decode(self, payload: Any, weight: float, shapes: Any) -> list[np.ndarray]:
            return []

    def client_codec(section: SecureAggregationSection, *, key_dir: str | None) -> Codec:
        seen.append(section)
        return Codec()

    monkeypatch.setattr(fedai.schemes, "client_codec", client_codec)
    agg = aggregate(scheme="paillier", secure_aggregation={**_section(), "workers": 256})

    # Act
    agg.decode(key_dir="keys")

    # Assert: the holder's default, not the file's
    assert [s.workers for s in seen] == [0]


def test_a_run_file_linked_to_a_device_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: final-aggregate.npz -> /dev/zero (tar and rsync -a keep links): reading it
    # would never end. Reading is trapped so that the test cannot hang.
    if not Path("/dev/zero").exists():
        pytest.skip("needs /dev/zero")
    (tmp_path / "final-aggregate.npz").symlink_to("/dev/zero")

    def no_read(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", no_read)

    # Act / Assert
    with pytest.raises(CheckpointError, match=r"final-aggregate\.npz must be a regular file"):
        FinalAggregate.load(tmp_path)
