"""Turn a mutation plus the fixtures into the exact input of a decoder (pure Python).

A mutation is a small JSON-able dict (planned by :mod:`fuzz_plans`, byte edits in
:mod:`fuzz_wire`); :func:`apply_envelope` and :func:`apply_holder` build the decoder input
from it, in the parent (to save a bad trial's input) as in the worker (to run it).

Targets:

* ``coordinator``: ``CkksSum.check(m, shapes)`` then ``CkksSum.sum([other, m])`` (or
  ``[m, other]``).
* ``client``: ``CkksCodec.decode(m, total_weight, shapes)`` on a mutated aggregate.
* ``holder_rows`` / ``holder_columns``: ``ModelHolder.evaluate(layer, context, batch)``.

"Authenticated" envelope mutations (``auth=True``) recompute the HMAC tag with the key
set's MAC key after the edit, as any client (an insider) can; unauthenticated ones keep the
old tag and must be rejected by the MAC or earlier.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fuzz_wire import Mutation, MutationError, edit_bytes, mutate_context_proto

from fedai.crypto import envelope as _envelope

TARGETS = ("coordinator", "client", "holder_rows", "holder_columns")
ENVELOPE_TARGETS = ("coordinator", "client")
HOLDER_TARGETS = ("holder_rows", "holder_columns")

TAG_BYTES = _envelope.TAG_BYTES
FIXED = struct.Struct(">8sHBB32sQIIII")

#: Envelope header fields: name -> (offset, width in bytes).
HEADER_FIELDS: dict[str, tuple[int, int]] = {
    "version": (8, 2),
    "scheme": (10, 1),
    "kind": (11, 1),
    "n_values": (44, 8),
    "slots": (52, 4),
    "n_blobs": (56, 4),
    "n_summands": (60, 4),
    "n_arrays": (64, 4),
}


# --------------------------------------------------------------------------- envelope


@dataclass
class EnvelopeFixture:
    """Inputs an envelope mutation starts from.

    Attributes:
        payload: The payload mutated (a contribution, or the aggregate for ``client``).
        donors: Other payloads of the same layout (``other``: a second contribution; for
            ``client`` also ``a``/``b``: the two contributions summed into ``payload``).
        alt_blobs: Other legitimate ciphertexts made under the key set or another one
            (``scale30``, ``lowlevel``, ``size3``, ``foreign``, ``short``, ``huge``).
        mac_key: The key set's payload MAC key.
        total_weight: The true total weight (``client``).
        shapes: The model shapes.
    """

    payload: list[np.ndarray]
    donors: dict[str, list[np.ndarray]]
    alt_blobs: dict[str, bytes]
    mac_key: bytes
    total_weight: float = 1.0
    shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class EnvelopeInput:
    """What a coordinator / client trial feeds the decoder."""

    payload: Any
    total_weight: float
    shapes: list[tuple[int, ...]]
    mutated_first: bool = False


def header_layout(header: bytes) -> dict[str, Any]:
    """Describe a good header: its length and each array's field offsets."""
    n_arrays = FIXED.unpack_from(header)[-1]
    offset = FIXED.size
    arrays = []
    for _ in range(n_arrays):
        ndim = header[offset + 1]
        arrays.append(
            {
                "itemsize": offset,
                "ndim": offset + 1,
                "dims": [offset + 2 + 8 * k for k in range(ndim)],
            }
        )
        offset += 2 + 8 * ndim
    return {"length": len(header), "body": offset, "arrays": arrays}


def _split_header(header: bytes) -> tuple[bytes, bytes]:
    return header[:-TAG_BYTES], header[-TAG_BYTES:]


def _retag(mac_key: bytes, body_header: bytes, blobs: Sequence[bytes]) -> bytes:
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in blobs]
    return body_header + _envelope._tag(mac_key, body_header, arrays)


def _patch(data: bytes, offset: int, width: int, value: int, *, little: bool = False) -> bytes:
    if value >= 2 ** (8 * width) or value < 0:
        raise MutationError(f"value {value} does not fit {width} bytes")
    raw = value.to_bytes(width, "little" if little else "big")
    return data[:offset] + raw + data[offset + width :]


def _respec(body: bytes, specs: list[tuple[int, tuple[int, ...]]], n_arrays: int) -> bytes:
    """Rebuild a header body (no tag) with new specs and array count, same fixed fields."""
    fixed = list(FIXED.unpack_from(body))
    fixed[-1] = n_arrays
    parts = [FIXED.pack(*fixed)]
    for itemsize, shape in specs:
        parts.append(struct.pack(">BB", itemsize, len(shape)))
        parts.extend(struct.pack(">Q", d) for d in shape)
    return b"".join(parts)


def _specs_of(body: bytes) -> list[tuple[int, tuple[int, ...]]]:
    n_arrays = FIXED.unpack_from(body)[-1]
    offset = FIXED.size
    specs = []
    for _ in range(n_arrays):
        itemsize, ndim = body[offset], body[offset + 1]
        dims = struct.unpack_from(f">{ndim}Q", body, offset + 2)
        specs.append((itemsize, tuple(dims)))
        offset += 2 + 8 * ndim
    return specs


def _reshape(body: bytes, how: str) -> bytes:
    specs = _specs_of(body)
    total = sum(math.prod(s) for _, s in specs)
    if how == "transpose0":
        specs[0] = (specs[0][0], specs[0][1][::-1])
    elif how == "flatten0":
        specs[0] = (specs[0][0], (math.prod(specs[0][1]),))
    elif how == "merge":
        specs = [(8, (total,))]
    elif how == "swap_order":
        specs = specs[::-1]
    elif how.startswith("itemsize"):
        specs = [(int(how[len("itemsize") :]), s) for _, s in specs]
    elif how == "scalar_extra":
        specs = [*specs, (8, ())]
    elif how == "zero_dim":
        specs = [*specs, (8, (0,))]
    elif how == "split":
        specs = [(specs[0][0], (1,)), (specs[0][0], (math.prod(specs[0][1]) - 1,)), *specs[1:]]
    elif how == "nine_dims":
        specs[0] = (specs[0][0], (*specs[0][1], *([1] * 7)))
    else:
        raise MutationError(f"unknown reshape {how!r}")
    return _respec(body, specs, len(specs))


def apply_envelope(m: Mutation, fx: EnvelopeFixture) -> EnvelopeInput:
    """Build the decoder input for envelope mutation ``m``.

    Raises:
        MutationError: ``m`` does not apply to ``fx`` (a harness bug).
    """
    header = fx.payload[0].tobytes()
    blobs = [a.tobytes() for a in fx.payload[1:]]
    body, tag = _split_header(header)
    auth = bool(m.get("auth", True))
    total_weight, shapes = fx.total_weight, list(fx.shapes)
    family = m["family"]
    alt = dict(fx.alt_blobs)
    for name, donor in fx.donors.items():
        for j, a in enumerate(donor[1:]):
            alt[f"{name}_{j}"] = a.tobytes()
    if family == "header":
        if auth:
            body = edit_bytes(body, m, alt)
            header = body + tag
        else:
            header = edit_bytes(header, m, alt)
    elif family == "blob":
        j = int(m["blob"])
        blobs[j] = edit_bytes(blobs[j], m, alt)
    elif family == "field":
        name, value = str(m["field"]), int(m["value"])
        if name == "spec":
            offset, width = int(m["offset"]), int(m["width"])
        else:
            offset, width = HEADER_FIELDS[name]
        body = _patch(body, offset, width, value)
        header = body + tag
    elif family == "reshape":
        body = _reshape(body, str(m["how"]))
        header = body + tag
    elif family == "swap":
        blobs, header, body = _swap(m, blobs, header, body, fx, alt)
    elif family == "args":
        if "total_weight" in m:
            total_weight = float(m["total_weight"])
        if "shapes" in m:
            shapes = [tuple(s) for s in m["shapes"]]
    elif family not in {"container", "none"}:
        raise MutationError(f"unknown envelope family {family!r}")
    if auth and family not in {"container", "args", "none"}:
        header = _retag(fx.mac_key, body, blobs)
    payload: Any = [
        np.frombuffer(header, dtype=np.uint8),
        *(np.frombuffer(b, np.uint8) for b in blobs),
    ]
    if family == "container":
        payload = _container(str(m["how"]), payload)
    return EnvelopeInput(
        payload=payload,
        total_weight=total_weight,
        shapes=shapes,
        mutated_first=bool(m.get("mutated_first", False)),
    )


def _swap(
    m: Mutation,
    blobs: list[bytes],
    header: bytes,
    body: bytes,
    fx: EnvelopeFixture,
    alt: dict[str, bytes],
) -> tuple[list[bytes], bytes, bytes]:
    how = str(m["how"])
    j = int(m.get("blob", 0))
    if how == "swap_blobs":
        blobs = blobs[::-1]
    elif how == "dup_blob":
        blobs = [blobs[j]] * len(blobs)
    elif how == "alt":
        blobs[j] = alt[str(m["source"])]
    elif how == "drop_blob":
        blobs = blobs[:j] + blobs[j + 1 :]
    elif how == "add_blob":
        blobs = [*blobs, blobs[j]]
    elif how == "donor_header":
        header = fx.donors[str(m["source"])][0].tobytes()
        body = header[:-TAG_BYTES]
    elif how == "header_as_blob":
        blobs[j] = header
    elif how == "blob_as_header":
        header = blobs[j][: len(header)]
        body = header[:-TAG_BYTES]
    else:
        raise MutationError(f"unknown swap {how!r}")
    return blobs, header, body


def _container(how: str, payload: list[np.ndarray]) -> Any:
    if how == "empty":
        return []
    if how == "header_only":
        return payload[:1]
    if how == "tuple":
        return tuple(payload)
    if how == "float_blob":
        return [payload[0], payload[1].astype(np.float32), *payload[2:]]
    if how == "int8_blob":
        return [payload[0], payload[1].view(np.int8), *payload[2:]]
    if how == "2d_header":
        return [payload[0].reshape(1, -1), *payload[1:]]
    if how == "bytes_header":
        return [payload[0].tobytes(), *payload[1:]]
    if how == "none_blob":
        return [payload[0], None, *payload[2:]]
    if how == "strided_blob":
        return [payload[0], np.repeat(payload[1], 2)[::2], *payload[2:]]
    if how == "empty_blob":
        return [payload[0], np.zeros(0, np.uint8), *payload[2:]]
    if how == "ndarray":
        return np.concatenate(payload)
    raise MutationError(f"unknown container {how!r}")


# --------------------------------------------------------------------------- holder


@dataclass
class HolderFixture:
    """Inputs a holder mutation starts from (one layout).

    Attributes:
        layout: ``rows`` or ``columns``.
        rows: Query rows encrypted.
        features: Features per row (layer 0's input width).
        context: The querier's public context.
        ciphertexts: The encrypted batch.
        alt_contexts: ``private`` (with secret key), ``other_profile``, ``public_key``.
        alt_cts: Legit ciphertexts of the right size but another scale / level / key /
            polynomial count, or another layout (``scale30``, ``lowlevel``, ``size3``,
            ``foreign``, ``short``, ``other_layout``).
    """

    layout: str
    rows: int
    features: int
    context: bytes
    ciphertexts: tuple[bytes, ...]
    alt_contexts: dict[str, bytes]
    alt_cts: dict[str, bytes]


@dataclass
class HolderInput:
    """What a holder trial feeds ``ModelHolder.evaluate``."""

    layer: int
    context: bytes
    layout: str
    rows: int
    features: int
    ciphertexts: tuple[bytes, ...]


def apply_holder(m: Mutation, fx: HolderFixture) -> HolderInput:
    """Build the ``evaluate`` input for holder mutation ``m``.

    Raises:
        MutationError: ``m`` does not apply to ``fx`` (a harness bug).
    """
    layer, context, layout = 0, fx.context, fx.layout
    rows, features = fx.rows, fx.features
    cts = list(fx.ciphertexts)
    family = m["family"]
    if family == "ct":
        j = int(m["ct"])
        cts[j] = edit_bytes(cts[j], m, fx.alt_cts)
    elif family == "ctx":
        context = edit_bytes(context, m, {})
    elif family == "ctx_pb":
        context = mutate_context_proto(context, str(m["op"]), m.get("value"))
    elif family == "ctx_alt":
        context = fx.alt_contexts[str(m["source"])] if m["source"] != "empty" else b""
    elif family == "meta":
        name, value = str(m["field"]), int(m["value"])
        if name == "rows":
            rows = value
        elif name == "features":
            features = value
        elif name == "layer":
            layer = value
        else:
            raise MutationError(f"unknown meta field {name!r}")
    elif family == "other_layout":
        layout = "columns" if layout == "rows" else "rows"
    elif family == "ct_swap":
        how, j = str(m["how"]), int(m.get("ct", 0))
        if how == "swap":
            k = int(m["with"])
            cts[j], cts[k] = cts[k], cts[j]
        elif how == "dup":
            cts = [cts[j]] * len(cts)
        elif how == "drop":
            cts = cts[:j] + cts[j + 1 :]
        elif how == "add":
            cts = [*cts, cts[j]]
        elif how == "alt":
            cts[j] = fx.alt_cts[str(m["source"])]
        elif how == "context_as_ct":
            cts[j] = context
        elif how == "ct_as_context":
            context = cts[j]
        elif how == "empty":
            cts[j] = b""
        else:
            raise MutationError(f"unknown ct swap {how!r}")
    elif family != "none":
        raise MutationError(f"unknown holder family {family!r}")
    return HolderInput(
        layer=layer,
        context=context,
        layout=layout,
        rows=rows,
        features=features,
        ciphertexts=tuple(cts),
    )


__all__ = [
    "ENVELOPE_TARGETS",
    "HEADER_FIELDS",
    "HOLDER_TARGETS",
    "TAG_BYTES",
    "TARGETS",
    "EnvelopeFixture",
    "EnvelopeInput",
    "HolderFixture",
    "HolderInput",
    "apply_envelope",
    "apply_holder",
    "header_layout",
]
