"""Regression reproductions of fuzz findings, each run in a fresh worker process.

Each of these once killed or escaped a decoder: a flipped bit in the protobuf key of the
ciphertexts field (a vector with zero ciphertexts that segfaulted on add), an authenticated
``n_summands`` of 2**32-1 (``struct.error`` when the coordinator re-enveloped the sum) and a
ciphertext at another scale (``ValueError('scale mismatch')``). Every one must now end in a
typed :class:`fedai.errors.FedAIError`.
"""

from __future__ import annotations

from typing import Any

import pytest
from fuzz_supervisor import Supervisor, Trial


def _run(supervisor: Supervisor, target: str, mutation: dict[str, Any]) -> dict[str, Any]:
    return supervisor.run(Trial(target, "regression", 0, mutation), fresh=True)


def _summary(record: dict[str, Any]) -> str:
    return (
        f"{record['outcome']} (stage {record.get('stage')}): {record.get('error')}: "
        f"{record.get('message')} @ {record.get('where')} {record.get('stack', '')}"
    )


def _assert_typed(record: dict[str, Any]) -> None:
    """The input is invalid: it must be refused with a FedAIError."""
    assert record["outcome"] == "typed", _summary(record)


def _assert_contained(record: dict[str, Any]) -> None:
    """The input may be legitimate: refused with a FedAIError, or accepted and sane."""
    assert record["outcome"] in ("typed", "ok"), _summary(record)


@pytest.mark.parametrize("bit", [3, 5, 6])
@pytest.mark.parametrize("mutated_first", [False, True])
@pytest.mark.parametrize("blob", [0, 1])
def test_coordinator_ciphertexts_key_flip(
    supervisor: Supervisor, bit: int, mutated_first: bool, blob: int
) -> None:
    # Byte 4 of a 4096-value ciphertext (byte 3 of the 74-value one) is the protobuf key
    # 0x12 of the ciphertexts field.
    pos = 4 if blob == 0 else 3
    record = _run(
        supervisor,
        "coordinator",
        {
            "family": "blob",
            "blob": blob,
            "op": "bitflip",
            "pos": pos,
            "bit": bit,
            "auth": True,
            "mutated_first": mutated_first,
        },
    )
    _assert_typed(record)


@pytest.mark.parametrize("bit", [3, 5, 6])
def test_client_ciphertexts_key_flip(supervisor: Supervisor, bit: int) -> None:
    record = _run(
        supervisor,
        "client",
        {"family": "blob", "blob": 0, "op": "bitflip", "pos": 4, "bit": bit, "auth": True},
    )
    _assert_typed(record)


@pytest.mark.parametrize("target", ["holder_rows", "holder_columns"])
@pytest.mark.parametrize("bit", [3, 5, 6])
def test_holder_ciphertexts_key_flip(supervisor: Supervisor, target: str, bit: int) -> None:
    # Vectors of < 128 values: the size varint is one byte, the key sits at byte 3.
    record = _run(
        supervisor, target, {"family": "ct", "ct": 0, "op": "bitflip", "pos": 3, "bit": bit}
    )
    _assert_typed(record)


@pytest.mark.parametrize("target", ["coordinator", "client"])
@pytest.mark.parametrize("op", [("drop", 2), ("dup_ct", None), ("sizes", [])])
def test_vector_without_one_ciphertext(
    supervisor: Supervisor, target: str, op: tuple[str, Any]
) -> None:
    record = _run(
        supervisor,
        target,
        {"family": "blob", "blob": 0, "op": "pb", "pb": op[0], "arg": op[1], "auth": True},
    )
    _assert_typed(record)


@pytest.mark.parametrize("target", ["coordinator", "client"])
@pytest.mark.parametrize("value", [2**31, 2**32 - 1])
def test_authenticated_n_summands_overflow(supervisor: Supervisor, target: str, value: int) -> None:
    record = _run(
        supervisor,
        target,
        {"family": "field", "field": "n_summands", "value": value, "auth": True},
    )
    if target == "coordinator" and value == 2**32 - 1:  # the sum cannot be re-enveloped
        _assert_typed(record)
    else:
        _assert_contained(record)


@pytest.mark.parametrize("mutated_first", [False, True])
@pytest.mark.parametrize("source", ["scale30_0", "lowlevel_0", "size3_0"])
def test_coordinator_ciphertext_at_another_scale_or_level(
    supervisor: Supervisor, mutated_first: bool, source: str
) -> None:
    # Another scale cannot be added to the honest ciphertext; another level or three
    # polynomials can (TenSEAL mod-switches; SEAL decrypts size-3 ciphertexts), so those
    # may be refused or summed, but never crash or decode out of bounds.
    record = _run(
        supervisor,
        "coordinator",
        {
            "family": "swap",
            "how": "alt",
            "blob": 0,
            "source": source,
            "auth": True,
            "mutated_first": mutated_first,
        },
    )
    if source.startswith("scale"):
        _assert_typed(record)
    else:
        _assert_contained(record)


@pytest.mark.parametrize("target", ["coordinator", "client"])
@pytest.mark.parametrize("scale", [2.0**30, 2.0**41, float("nan")])
def test_scale_field_edited(supervisor: Supervisor, target: str, scale: float) -> None:
    # The coordinator cannot add it to an honest ciphertext; the client may decode it (a
    # key holder can encrypt any in-bound values anyway) but must stay within bounds.
    record = _run(
        supervisor,
        target,
        {"family": "blob", "blob": 0, "op": "pb", "pb": "scale", "arg": scale, "auth": True},
    )
    if target == "coordinator":
        _assert_typed(record)
    else:
        _assert_contained(record)


@pytest.mark.parametrize("target", ["holder_rows", "holder_columns"])
@pytest.mark.parametrize("source", ["scale30", "lowlevel", "size3"])
def test_holder_ciphertext_at_another_scale_or_level(
    supervisor: Supervisor, target: str, source: str
) -> None:
    # COLUMNS once raised ValueError('scale mismatch') adding it to the other columns.
    ct = 0 if target == "holder_rows" else 4  # the COLUMNS bias column is added last
    record = _run(
        supervisor, target, {"family": "ct_swap", "how": "alt", "ct": ct, "source": source}
    )
    _assert_contained(record)


@pytest.mark.parametrize("target", ["holder_rows", "holder_columns"])
@pytest.mark.parametrize("rows", [2**32 - 1, 2**63 - 1])
def test_holder_huge_row_count(supervisor: Supervisor, target: str, rows: int) -> None:
    # Not reachable over gRPC (rows is a uint32 capped at max_rows), but evaluate is public
    # API: the row count must be checked against the ciphertexts before planning chunks.
    record = _run(supervisor, target, {"family": "meta", "field": "rows", "value": rows})
    _assert_typed(record)


@pytest.mark.parametrize("target", ["holder_rows", "holder_columns"])
@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_holder_context_without_auto_mod_switch(
    supervisor: Supervisor, target: str, flags: int
) -> None:
    # The querier's context carries TenSEAL's auto flags; with auto_mod_switch (bit 2)
    # off, ROWS raised ValueError('encrypted and plain parameter mismatch') adding the
    # masks after the rescale (one flipped bit of the 102-byte context does it).
    record = _run(supervisor, target, {"family": "ctx_pb", "op": "auto_flags", "value": flags})
    _assert_contained(record)


@pytest.mark.parametrize("target", ["holder_rows", "holder_columns"])
@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), 2.0**30])
def test_holder_context_scale(supervisor: Supervisor, target: str, scale: float) -> None:
    # log2 of a zero or negative scale once escaped as ValueError('math domain error').
    record = _run(supervisor, target, {"family": "ctx_pb", "op": "scale", "value": scale})
    _assert_typed(record)


@pytest.mark.parametrize("mutated_first", [False, True])
@pytest.mark.parametrize("how", ["itemsize2", "itemsize4", "itemsize8"])
def test_coordinator_blames_the_contribution_with_other_dtypes(
    supervisor: Supervisor, mutated_first: bool, how: str
) -> None:
    # check(payload, shapes) cannot see dtypes; sum compared every layout with payload 0's,
    # so a key holder whose payload came first got every honest contribution dropped.
    # The worker turns a wrong ContributionError.index into "insane" (with an honest
    # majority the odd payload must be blamed wherever it stands).
    record = _run(
        supervisor,
        "coordinator",
        {"family": "reshape", "how": how, "auth": True, "mutated_first": mutated_first},
    )
    _assert_contained(record)
