"""The fuzz harness itself: reproducible mutations, MAC handling, crash containment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzz_fixtures import load_envelope_fixture, load_holder_fixture, load_shape
from fuzz_mutations import TAG_BYTES, TARGETS, apply_envelope, apply_holder
from fuzz_plans import mutation_for, sweep_mutations
from fuzz_supervisor import Supervisor, Tally, Trial, save_input
from fuzz_wire import pb_encode, pb_parse

from fedai.crypto import envelope


@pytest.mark.parametrize("target", TARGETS)
def test_trials_are_reproducible(fuzz_fixture_dir: Path, target: str) -> None:
    shape = load_shape(fuzz_fixture_dir, target)
    first = [mutation_for(target, 7, i, shape) for i in range(50)]
    again = [mutation_for(target, 7, i, shape) for i in range(50)]
    other = [mutation_for(target, 8, i, shape) for i in range(50)]
    assert first == again
    assert first != other
    assert mutation_for(target, "sweep", 3, shape) == sweep_mutations(target, shape)[3]


def _tag_ok(fx_mac: bytes, payload: list[np.ndarray]) -> bool:
    raw = payload[0].tobytes()
    return envelope._tag(fx_mac, raw[:-TAG_BYTES], payload[1:]) == raw[-TAG_BYTES:]


@pytest.mark.parametrize("auth", [True, False])
def test_authenticated_mutations_carry_a_valid_tag(fuzz_fixture_dir: Path, auth: bool) -> None:
    fx = load_envelope_fixture(fuzz_fixture_dir, "coordinator")
    m = {"family": "blob", "blob": 1, "op": "bitflip", "pos": 100, "bit": 2, "auth": auth}
    out = apply_envelope(m, fx).payload
    assert out[1].tobytes() == fx.payload[1].tobytes()
    assert out[2].tobytes() != fx.payload[2].tobytes()
    assert _tag_ok(fx.mac_key, out) is auth
    assert _tag_ok(fx.mac_key, fx.payload)


def test_protobuf_roundtrip_of_a_real_ciphertext(fuzz_fixture_dir: Path) -> None:
    fx = load_holder_fixture(fuzz_fixture_dir, "holder_columns")
    blob = fx.ciphertexts[0]
    fields = pb_parse(blob)
    assert [f.number for f in fields] == [1, 2, 3]
    assert pb_encode(fields) == blob


def test_holder_mutation_leaves_the_fixture_alone(fuzz_fixture_dir: Path) -> None:
    fx = load_holder_fixture(fuzz_fixture_dir, "holder_rows")
    before = fx.ciphertexts
    inp = apply_holder({"family": "ct", "ct": 0, "op": "bitflip", "pos": 3, "bit": 5}, fx)
    assert fx.ciphertexts == before
    assert inp.ciphertexts[0][3] == before[0][3] ^ 0x20


@pytest.mark.parametrize(
    ("how", "outcome", "error"),
    [("segfault", "death", "SIGSEGV"), ("abort", "death", "SIGABRT"), ("exit", "death", "exit 3")],
)
def test_a_dying_worker_is_recorded_and_replaced(
    supervisor: Supervisor, how: str, outcome: str, error: str
) -> None:
    # Act
    record = supervisor.run(Trial("coordinator", "selftest", 0, {"family": "selftest", "how": how}))
    after = supervisor.run(Trial("coordinator", "control", 0, {"family": "none"}))
    # Assert
    assert record["outcome"] == outcome, record
    assert record["error"] == error, record
    assert record["isolated"] is True
    assert after["outcome"] == "ok", after


def test_segfault_record_names_the_python_frame(supervisor: Supervisor) -> None:
    record = supervisor.run(
        Trial("client", "selftest", 0, {"family": "selftest", "how": "segfault"})
    )
    assert any("fuzz_worker.py" in frame for frame in record["stack"]), record


def test_a_hanging_worker_is_killed_and_replaced(fuzz_fixture_dir: Path, tmp_path: Path) -> None:
    with Supervisor(fuzz_fixture_dir, tmp_path, timeout=1.0) as sup:
        record = sup.run(Trial("client", "selftest", 0, {"family": "selftest", "how": "hang"}))
        after = sup.run(Trial("client", "control", 0, {"family": "none"}))
    assert record["outcome"] == "hang", record
    assert after["outcome"] == "ok", after


def test_untyped_errors_are_classified(supervisor: Supervisor) -> None:
    trial = Trial("client", "selftest", 0, {"family": "selftest", "how": "raise"})
    record = supervisor.run(trial)
    tally = Tally("client")
    tally.add(record, trial.mutation)
    assert record["outcome"] == "untyped"
    assert record["error"] == "RuntimeError"
    assert list(tally.bad_classes()) == [
        f"untyped RuntimeError: selftest raise @ {record['where']}"
    ]


def test_bad_inputs_are_saved_for_replay(fuzz_fixture_dir: Path, tmp_path: Path) -> None:
    shape = load_shape(fuzz_fixture_dir, "holder_columns")
    trial = Trial("holder_columns", 3, 5, mutation_for("holder_columns", 3, 5, shape))
    path = save_input(fuzz_fixture_dir, trial, {"outcome": "death"}, tmp_path)
    assert path.exists()
    assert path.with_suffix(".npz").exists()
    assert "--replay holder_columns/3/5" in path.read_text()
