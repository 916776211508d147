"""A key holder that re-tags item sizes: the declared layout decides who is blamed.

The insider audit's two findings, played by a client of the key set (it holds the secret
key and the MAC key, so its forged headers authenticate):

1. it re-tags its own contribution with float64 item sizes (same shapes). The sum used to
   break the 1:1 tie toward the wider dtype, blame the honest float32 contribution and,
   with ``min_contributors = 1``, make the attacker's payload the aggregate;
2. it relabels an aggregate as float16, which clients decoded with the precision lost.

CKKS and Paillier with real keys (the sizes the other crypto tests use), and the plaintext
scheme, where every payload travels as float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedai.aggregation import (
    ArraySpec,
    Payload,
    PlainCodec,
    PlainSum,
    agreed_layout,
    layout_of,
)
from fedai.config import ExperimentConfig
from fedai.crypto import (
    CkksCodec,
    CkksSum,
    Envelope,
    PaillierCodec,
    PaillierSum,
    Scheme,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
    load_paillier_client_bundle,
    load_paillier_coordinator_bundle,
)
from fedai.crypto.envelope import PayloadKind, reference_layout
from fedai.errors import ContributionError, CorruptPayloadError, LayoutMismatchError
from fedai.models import ModelSpec, build_model, get_weights
from fedai.results import RoundRecord
from server.strategy import GlobalModel, LinearStrategy

SPEC = ModelSpec(name="mlp", input_shape=(4,), num_classes=2, hidden=4)  # 70 values
WEIGHT = 3  # every contribution's aggregation weight (an integer: Paillier needs one)


def weights(seed: int, shift: float = 0.0) -> list[np.ndarray]:
    """A real model's float32 weights (+ ``shift``, so the attacker's are recognisable)."""
    return [a + np.float32(shift) for a in get_weights(build_model(SPEC, seed=seed))]


SHAPES = [a.shape for a in weights(0)]
LAYOUT = layout_of(weights(0))  # what the coordinator declares: the model's, float32


@dataclass(frozen=True)
class KeyHolder:
    """A client of one key set and the coordinator's sum under it."""

    scheme: str
    codec: CkksCodec | PaillierCodec
    summer: CkksSum | PaillierSum
    key_dir: Path
    code: int
    mac_key: bytes  # the clients' and the coordinator's: the same key
    slots: int

    def encode(self, arrays: list[np.ndarray]) -> Payload:
        return self.codec.encode(arrays, WEIGHT)

    def retag(self, payload: Payload, itemsize: int) -> Payload:
        """Rewrite every array's item size in the header and re-tag it with the MAC key."""
        env, blobs = Envelope.from_payload(
            payload,
            scheme=self.code,
            fingerprint=self.codec.fingerprint,
            mac_key=self.mac_key,
            slots=self.slots,
        )
        forged = dataclasses.replace(
            env, specs=tuple(ArraySpec(s.shape, itemsize) for s in env.specs)
        )
        return forged.to_payload([b.tobytes() for b in blobs], mac_key=self.mac_key)


@pytest.fixture(scope="module")
def ckks(tmp_path_factory: pytest.TempPathFactory) -> KeyHolder:
    out = tmp_path_factory.mktemp("ckks-layout")
    create_keys(out)
    codec = CkksCodec(load_client_bundle(out))
    return KeyHolder(
        scheme="ckks",
        codec=codec,
        summer=CkksSum(load_coordinator_bundle(out)),
        key_dir=out,
        code=int(Scheme.CKKS),
        mac_key=codec._bundle._mac_key,
        slots=codec._slots,
    )


@pytest.fixture(scope="module")
def paillier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyHolder]:
    out = tmp_path_factory.mktemp("paillier-layout")
    create_keys(out, scheme="paillier", key_bits=2048)
    codec = PaillierCodec(load_paillier_client_bundle(out), workers=1, rng=np.random.default_rng(0))
    yield KeyHolder(
        scheme="paillier",
        codec=codec,
        summer=PaillierSum(load_paillier_coordinator_bundle(out)),
        key_dir=out,
        code=int(Scheme.PAILLIER),
        mac_key=codec._mac_key,
        slots=codec.values_per_blob,
    )
    codec.close()


@pytest.fixture(params=["ckks", "paillier"])
def holder(request: pytest.FixtureRequest) -> KeyHolder:
    return request.getfixturevalue(str(request.param))  # type: ignore[no-any-return]


@pytest.fixture
def honest(holder: KeyHolder) -> Payload:
    return holder.encode(weights(1))


@pytest.fixture
def attacker(holder: KeyHolder) -> Payload:
    # Its own payload (recognisably other values), re-tagged: float64 items, same shapes.
    return holder.retag(holder.encode(weights(2, shift=1.0)), 8)


def pair(honest: Payload, attacker: Payload, attacker_at: int) -> list[Payload]:
    return [attacker, honest] if attacker_at == 0 else [honest, attacker]


def specs_of(holder: KeyHolder, payload: Payload) -> tuple[ArraySpec, ...]:
    env, _ = Envelope.from_payload(
        payload,
        scheme=holder.code,
        fingerprint=holder.codec.fingerprint,
        mac_key=holder.mac_key,
        slots=holder.slots,
    )
    return env.specs


# ---------------------------------------------------------------------- the coordinator


def test_the_forged_header_authenticates(holder: KeyHolder, attacker: Payload) -> None:
    # Arrange / Act: the re-tagged payload opens (the key holder's tag is valid)
    specs = specs_of(holder, attacker)

    # Assert: same shapes as the model, float64 items: only the layout check can see it
    assert [s.shape for s in specs] == SHAPES
    assert {s.itemsize for s in specs} == {8}


def test_check_compares_item_sizes_with_the_declared_layout(
    holder: KeyHolder, honest: Payload, attacker: Payload
) -> None:
    # Arrange: the honest payload passes
    holder.summer.check(honest, LAYOUT)

    # Act / Assert: the shapes alone match, the item sizes do not
    holder.summer.check(attacker, SHAPES)
    with pytest.raises(
        LayoutMismatchError,
        match=r"payload array 0 dtype must be float32 \(the declared layout\); got float64",
    ):
        holder.summer.check(attacker, LAYOUT)


@pytest.mark.parametrize("attacker_at", [0, 1])
def test_the_sum_blames_the_retagged_contribution_in_either_order(
    holder: KeyHolder, honest: Payload, attacker: Payload, attacker_at: int
) -> None:
    # Act
    with pytest.raises(ContributionError, match="dtype must be float32") as info:
        holder.summer.sum(pair(honest, attacker, attacker_at), shapes=LAYOUT)

    # Assert: the attacker's index, not the honest one's
    assert info.value.index == attacker_at


@pytest.mark.parametrize("attacker_at", [0, 1])
def test_the_round_loop_keeps_the_honest_contribution_as_the_aggregate(
    holder: KeyHolder, honest: Payload, attacker: Payload, attacker_at: int
) -> None:
    # Arrange: the real strategy with min_contributors = 1, bound as server.rounds binds it
    cfg = ExperimentConfig.from_mapping(
        {
            "secure_aggregation": {
                "scheme": holder.scheme,
                "key_dir": str(holder.key_dir),
                "min_contributors": 1,
                "workers": 1,
            }
        }
    )
    strategy = LinearStrategy(cfg, summer=holder.summer)
    strategy.bind(SPEC, SHAPES, layout=LAYOUT)
    good = [("honest", honest, float(WEIGHT)), ("attacker", attacker, float(WEIGHT))]
    if attacker_at == 0:
        good.reverse()
    record = RoundRecord(round=1, accuracy=None, loss=None, seconds=0.0)

    # Act
    candidate = strategy.aggregate_train(1, good, record, GlobalModel())

    # Assert: the attacker is the one left out; the aggregate is the honest model
    assert candidate is not None
    assert record.trained == ["honest"]
    assert "dtype must be float32" in record.failures["attacker"]
    out = holder.codec.decode(candidate.total, candidate.total_weight, LAYOUT)
    for got, want in zip(out, weights(1), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("attacker_at", [0, 1])
def test_without_declared_dtypes_a_tie_blames_nobody(
    holder: KeyHolder, honest: Payload, attacker: Payload, attacker_at: int
) -> None:
    # A caller that passes no layout (shapes only, as the statistics stage does today):
    # a 1:1 disagreement cannot tell the honest payload, so nobody is dropped for it.
    with pytest.raises(CorruptPayloadError, match="with no majority") as info:
        holder.summer.sum(pair(honest, attacker, attacker_at))

    assert not isinstance(info.value, ContributionError)


def test_the_declared_layout_beats_a_majority_of_retagged_payloads(
    holder: KeyHolder, honest: Payload, attacker: Payload
) -> None:
    # Arrange: two re-tagged payloads (say two colluding key holders), one honest
    payloads = [attacker, holder.retag(holder.encode(weights(3)), 8), honest]

    # Act / Assert: without a declaration the majority would win; with one it does not
    with pytest.raises(ContributionError) as undeclared:
        holder.summer.sum(payloads)
    assert undeclared.value.index == 2
    with pytest.raises(ContributionError) as declared:
        holder.summer.sum(payloads, shapes=LAYOUT)
    assert declared.value.index == 0


def test_reference_layout_is_the_declared_one(holder: KeyHolder) -> None:
    # Arrange
    envs = [
        Envelope(
            scheme=holder.code,
            kind=PayloadKind.CONTRIBUTION,
            fingerprint=holder.codec.fingerprint,
            n_values=sum(s.size for s in LAYOUT),
            slots=holder.slots,
            n_summands=1,
            specs=tuple(ArraySpec(s.shape, size) for s in LAYOUT),
        )
        for size in (8, 4)
    ]

    # Act / Assert: the float64 envelope is blamed wherever it stands
    with pytest.raises(ContributionError) as first:
        reference_layout(envs, LAYOUT)
    with pytest.raises(ContributionError) as last:
        reference_layout(envs[::-1], LAYOUT)
    assert (first.value.index, last.value.index) == (0, 1)
    assert reference_layout(envs[1:], LAYOUT) is envs[1]


# ---------------------------------------------------------------------- the clients


@pytest.mark.parametrize("itemsize", [2, 8])
def test_decode_refuses_a_relabelled_aggregate(
    holder: KeyHolder, honest: Payload, itemsize: int
) -> None:
    # Arrange: a true aggregate, relabelled by a holder of the MAC key
    aggregate = holder.summer.sum([honest], shapes=LAYOUT)
    relabelled = holder.retag(aggregate, itemsize)
    got = {2: "float16", 8: "float64"}[itemsize]

    # Act / Assert
    with pytest.raises(
        LayoutMismatchError,
        match=rf"aggregate array 0 dtype must be float32 \(the declared layout\); got {got}",
    ):
        holder.codec.decode(relabelled, WEIGHT, LAYOUT)
    out = holder.codec.decode(aggregate, WEIGHT, LAYOUT)
    assert [a.dtype for a in out] == [np.dtype(np.float32)] * len(LAYOUT)


def test_decode_with_shapes_only_still_refuses_float16(holder: KeyHolder, honest: Payload) -> None:
    # clients/app.py passes bare shapes: no fedai layout is float16, so it is refused
    relabelled = holder.retag(holder.summer.sum([honest]), 2)

    with pytest.raises(
        LayoutMismatchError,
        match=r"aggregate array 0 dtype must be float32 or float64; got float16",
    ):
        holder.codec.decode(relabelled, WEIGHT, SHAPES)


# ---------------------------------------------------------------------- in the clear


@pytest.fixture
def plain_honest() -> Payload:
    return PlainCodec().encode(weights(1), WEIGHT)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_plain_check_refuses_payloads_that_are_not_float64(
    plain_honest: Payload, dtype: type[np.floating]
) -> None:
    narrowed = [a.astype(dtype) for a in plain_honest]

    PlainSum().check(plain_honest, LAYOUT)  # float32 model, float64 on the wire
    with pytest.raises(LayoutMismatchError, match=r"plain payload array 0 dtype must be float64"):
        PlainSum().check(narrowed, LAYOUT)


@pytest.mark.parametrize("attacker_at", [0, 1])
@pytest.mark.parametrize("how", ["dtype", "shape"])
def test_plain_sum_blames_the_odd_payload_in_either_order(
    plain_honest: Payload, attacker_at: int, how: str
) -> None:
    # Arrange: another dtype, or another shape for the first array (the old sum compared
    # shapes with payload 0's, so an odd payload in front got the honest one blamed)
    odd: Payload
    if how == "dtype":
        odd = [a.astype(np.float32) for a in plain_honest]
    else:
        odd = [np.zeros((5, 4)), *plain_honest[1:]]

    # Act
    with pytest.raises(ContributionError) as info:
        PlainSum().sum(pair(plain_honest, odd, attacker_at), shapes=LAYOUT)

    # Assert
    assert info.value.index == attacker_at


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_plain_decode_refuses_a_narrowed_aggregate(
    plain_honest: Payload, dtype: type[np.floating]
) -> None:
    aggregate = PlainSum().sum([plain_honest], shapes=LAYOUT)
    narrowed = [a.astype(dtype) for a in aggregate]

    with pytest.raises(
        LayoutMismatchError,
        match=rf"aggregate array 0 dtype must be float64 .*; got {np.dtype(dtype)}",
    ):
        PlainCodec().decode(narrowed, WEIGHT, LAYOUT)
    out = PlainCodec().decode(aggregate, WEIGHT, LAYOUT)
    np.testing.assert_allclose(out[0], weights(1)[0], atol=1e-6)


# ---------------------------------------------------------------------- the helpers


def test_agreed_layout_declared_dtypes_decide_and_bare_shapes_need_agreement() -> None:
    f32 = tuple(LAYOUT)
    f64 = tuple(ArraySpec(s.shape, 8) for s in LAYOUT)

    with pytest.raises(ContributionError) as declared:
        agreed_layout([f64, f64, f32], LAYOUT)
    assert declared.value.index == 0
    assert agreed_layout([f32, f32], LAYOUT) == f32
    with pytest.raises(ContributionError) as majority:
        agreed_layout([f64, f32, f64], SHAPES)
    assert majority.value.index == 1
    with pytest.raises(CorruptPayloadError, match="with no majority"):
        agreed_layout([f64, f32], SHAPES)


def test_array_spec_refuses_an_item_size_no_float_has() -> None:
    with pytest.raises(ValueError, match=r"itemsize must be one of \[2, 4, 8\]; got 3"):
        ArraySpec((2,), 3)
    with pytest.raises(ValueError, match="must be a float16/32/64 array; got int64"):
        layout_of([np.zeros(2, np.int64)])
