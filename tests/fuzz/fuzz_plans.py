"""Which mutations a trial runs: the exhaustive sweep and the seeded random stream.

A trial is named by ``(target, seed, index)``. ``seed`` is an int for a random stream
(:func:`random_mutation`) or the string ``"sweep"`` for the exhaustive enumeration
(:func:`sweep_mutations`: every bit of the envelope header, every bit of the first 64 bytes
of each ciphertext and of the whole context, every header field x every overflow value,
every structured protobuf / SEAL-header / context edit, every swap). Plans depend only on
:class:`Shape` (lengths and counts of the fixtures), never on their bytes, and new sweep
entries go at the end so that earlier trial names keep their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fuzz_mutations import ENVELOPE_TARGETS, HEADER_FIELDS, TARGETS
from fuzz_wire import SEAL_FIELDS, Mutation, MutationError

OVERFLOWS = (0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)
SMALL_OVERFLOWS = (0, 1, 2, 3, 4, 8, 9, 127, 128, 255, 2**15, 2**16 - 1)
FILL_VALUES = ("zero", "ff", "random")

#: Values written into each SEAL header field (see ``fuzz_wire.SEAL_FIELDS``).
SEAL_VALUES: dict[str, tuple[int, ...]] = {
    "magic": (0, 0xA15F, 0xFFFF),
    "header_size": (0, 15, 17, 255),
    "major": (0, 3, 5, 255),
    "minor": (0, 2, 4, 255),
    "compr_mode": (0, 1, 3, 255),
    "reserved": (1, 0xFFFF),
    "size": (0, 1, 15, 16, 17, 2**31 - 1, 2**32 - 1, 2**32 + 16, 2**63 - 1, 2**64 - 1),
}
SCALES = (
    0.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    5e-324,
    1.0,
    2.0**30,
    2.0**39,
    2.0**40 * (1 + 2**-30),
    2.0**41,
    2.0**80,
    2.0**200,
    1e308,
)
SIZES_VALUES: tuple[tuple[int, ...], ...] = (
    (),
    (0,),
    (1,),
    (2**31 - 1,),
    (2**32 - 1,),
    (4096, 4096),
    (1, 1),
    (0, 0, 0, 0),
)
TRUNCATE_ABS = (0, 1, 2, 3, 4, 5, 6, 8, 16, 19, 20, 21, 24, 32, 64, 68, 100)
TRUNCATE_MINUS = (1, 2, 8, 9, 32, 33)
EXTEND_COUNTS = (1, 7, 8, 9, 32, 1024)
ROWS_VALUES = (0, 1, 3, 4, 1024, 1025, 4096, 4097, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, -1)
FEATURES_VALUES = (0, 1, 3, 5, 4096, 4097, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, -1)
LAYER_VALUES = (1, 2, -1, -2, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1)
WEIGHT_VALUES = (0.0, -1.0, math.nan, math.inf, -math.inf, 5e-324, 1e-300, 1.0, 1e30, 3e18)
HOT_BYTES = 48  # protobuf framing + SEAL header + zstd frame header of a ciphertext
CT_PREFIX = 1024  # bit flips / byte sets go into the first KB of a ciphertext
CTX_PB_VALUES: dict[str, tuple[Any, ...]] = {
    "auto_flags": (0, 1, 2, 3, 4, 5, 6, 8, 2**32 - 1),
    "scale": SCALES,
    "encryption_type": (0, 2, 255, 2**32 - 1),
    "drop_public": (None,),
}


@dataclass(frozen=True)
class Shape:
    """Fixture facts a plan depends on (lengths and counts, not bytes)."""

    header: dict[str, Any] = field(default_factory=dict)
    n_blobs: int = 0
    alt_blobs: tuple[str, ...] = ()
    donors: tuple[str, ...] = ()
    n_cts: int = 0
    ctx_len: int = 0
    alt_contexts: tuple[str, ...] = ()
    alt_cts: tuple[str, ...] = ()


ENVELOPE_WEIGHTS = {
    "header_bitflip": 12,
    "header_byteset": 5,
    "header_truncate": 3,
    "header_extend": 2,
    "blob_bitflip": 20,
    "blob_byteset": 8,
    "blob_span": 3,
    "blob_truncate": 4,
    "blob_extend": 3,
    "field": 10,
    "spec": 6,
    "reshape": 3,
    "pb": 10,
    "seal": 6,
    "swap": 6,
    "container": 2,
    "args": 4,
}
HOLDER_WEIGHTS = {
    "ct_bitflip": 22,
    "ct_byteset": 8,
    "ct_span": 3,
    "ct_truncate": 4,
    "ct_extend": 3,
    "pb": 10,
    "seal": 6,
    "ctx_bitflip": 12,
    "ctx_byteset": 5,
    "ctx_truncate": 3,
    "ctx_extend": 2,
    "ctx_alt": 2,
    "meta": 10,
    "ct_swap": 8,
    "other_layout": 1,
    "ctx_pb": 3,
}
PB_OPS: tuple[tuple[str, Any], ...] = (
    ("drop", 1),
    ("drop", 2),
    ("drop", 3),
    ("dup_ct", None),
    *(("sizes", list(v)) for v in SIZES_VALUES),
    ("sizes_unpacked", "true"),
    *(("scale", s) for s in SCALES),
    ("unknown", None),
    ("garbage_ct", 16),
    ("garbage_ct", 300),
    ("reorder", None),
    ("len", 0),
    ("len", 2**31),
    ("len", 2**63),
)
CONTAINERS = (
    "empty",
    "header_only",
    "tuple",
    "float_blob",
    "int8_blob",
    "2d_header",
    "bytes_header",
    "none_blob",
    "strided_blob",
    "empty_blob",
    "ndarray",
)
RESHAPES = (
    "transpose0",
    "flatten0",
    "merge",
    "swap_order",
    "itemsize2",
    "itemsize4",
    "itemsize8",
    "itemsize3",
    "scalar_extra",
    "zero_dim",
    "split",
    "nine_dims",
)
CTX_ALTS = ("private", "other_profile", "public_key", "empty")


def _field_values(width: int, true: int | None = None) -> list[int]:
    base = SMALL_OVERFLOWS if width <= 2 else OVERFLOWS
    values = [v for v in base if v < 2 ** (8 * width)]
    if true is not None:
        values += [v for v in (true - 1, true + 1, 2 * true) if 0 <= v < 2 ** (8 * width)]
    return sorted(set(values))


def _pb_ops(shape: Shape) -> list[tuple[str, Any]]:
    ops = list(PB_OPS)
    ops += [("ct_from", name) for name in shape.alt_blobs or shape.alt_cts]
    return ops


def sweep_mutations(target: str, shape: Shape) -> list[Mutation]:
    """Exhaustive deterministic mutations of ``target`` (independent of any seed)."""
    out: list[Mutation] = []
    if target in ENVELOPE_TARGETS:
        hdr = shape.header
        for auth in (True, False):
            limit = hdr["body"] if auth else hdr["length"]
            out += [
                {"family": "header", "op": "bitflip", "pos": p, "bit": b, "auth": auth}
                for p in range(limit)
                for b in range(8)
            ]
            out += [
                {"family": "blob", "blob": j, "op": "bitflip", "pos": p, "bit": b, "auth": auth}
                for j in range(shape.n_blobs)
                for p in range(64)
                for b in range(8)
            ]
            out += _field_sweep(hdr, auth)
            out += [
                {"family": "blob", "blob": j, "op": "pb", "pb": op, "arg": arg, "auth": auth}
                for j in range(shape.n_blobs)
                for op, arg in _pb_ops(shape)
            ]
            out += [
                {"family": "blob", "blob": j, "op": "seal", "field": f, "value": v, "auth": auth}
                for j in range(shape.n_blobs)
                for f, values in SEAL_VALUES.items()
                for v in values
            ]
            out += [
                {"family": "header", "op": "truncate", "spec": {"n": n}, "auth": auth}
                for n in TRUNCATE_ABS
            ]
            out += [
                {"family": "blob", "blob": j, "op": "truncate", "spec": s, "auth": auth}
                for j in range(shape.n_blobs)
                for s in [{"n": n} for n in TRUNCATE_ABS] + [{"minus": k} for k in TRUNCATE_MINUS]
            ]
            out += [
                {"family": tgt, **blob, "op": "extend", "count": c, "fill": f, "auth": auth}
                for tgt, blob in [("header", {})]
                + [("blob", {"blob": j}) for j in range(shape.n_blobs)]
                for c in EXTEND_COUNTS
                for f in (*FILL_VALUES, "self")
            ]
            out += [{"family": "reshape", "how": h, "auth": auth} for h in RESHAPES]
            out += _swap_sweep(shape, auth)
        out += [{"family": "container", "how": h} for h in CONTAINERS]
        if target == "client":
            out += [{"family": "args", "total_weight": w} for w in WEIGHT_VALUES]
            out += [{"family": "args", "shapes": s} for s in _shape_args()]
        if target == "coordinator":
            for m in list(out):
                if m["family"] in {"blob", "swap"} and m.get("auth"):
                    out.append({**m, "mutated_first": True})
    else:
        for j in range(shape.n_cts):
            out += [
                {"family": "ct", "ct": j, "op": "bitflip", "pos": p, "bit": b}
                for p in range(64)
                for b in range(8)
            ]
            out += [
                {"family": "ct", "ct": j, "op": "pb", "pb": op, "arg": arg}
                for op, arg in _pb_ops(shape)
            ]
            out += [
                {"family": "ct", "ct": j, "op": "seal", "field": f, "value": v}
                for f, values in SEAL_VALUES.items()
                for v in values
            ]
            out += [
                {"family": "ct", "ct": j, "op": "truncate", "spec": s}
                for s in [{"n": n} for n in TRUNCATE_ABS] + [{"minus": k} for k in TRUNCATE_MINUS]
            ]
            out += [
                {"family": "ct", "ct": j, "op": "extend", "count": c, "fill": f}
                for c in EXTEND_COUNTS
                for f in (*FILL_VALUES, "self")
            ]
        out += [
            {"family": "ctx", "op": "bitflip", "pos": p, "bit": b}
            for p in range(min(shape.ctx_len, CT_PREFIX))
            for b in range(8)
        ]
        out += [
            {"family": "ctx", "op": "byteset", "pos": p, "value": v}
            for p in range(min(shape.ctx_len, CT_PREFIX))
            for v in ("zero", "ff")
        ]
        out += [{"family": "ctx", "op": "truncate", "spec": {"n": n}} for n in TRUNCATE_ABS] + [
            {"family": "ctx", "op": "truncate", "spec": {"minus": k}} for k in TRUNCATE_MINUS
        ]
        out += [
            {"family": "ctx", "op": "extend", "count": c, "fill": f}
            for c in EXTEND_COUNTS
            for f in (*FILL_VALUES, "self")
        ]
        out += [
            {"family": "ctx_alt", "source": s}
            for s in CTX_ALTS
            if s in shape.alt_contexts or s == "empty"
        ]
        out += [{"family": "meta", "field": "rows", "value": v} for v in ROWS_VALUES]
        out += [{"family": "meta", "field": "features", "value": v} for v in FEATURES_VALUES]
        out += [{"family": "meta", "field": "layer", "value": v} for v in LAYER_VALUES]
        out += [{"family": "other_layout"}]
        out += _ct_swap_sweep(shape)
        out += [
            {"family": "ctx_pb", "op": op, "value": v}
            for op, values in CTX_PB_VALUES.items()
            for v in values
        ]
    return out


def _field_sweep(hdr: dict[str, Any], auth: bool) -> list[Mutation]:
    out: list[Mutation] = [
        {"family": "field", "field": name, "value": v, "auth": auth}
        for name, (_, width) in HEADER_FIELDS.items()
        for v in _field_values(width)
    ]
    for i, arr in enumerate(hdr["arrays"]):
        slots = [("itemsize", arr["itemsize"], 1), ("ndim", arr["ndim"], 1)]
        slots += [(f"dim{k}", off, 8) for k, off in enumerate(arr["dims"])]
        for name, offset, width in slots:
            out += [
                {
                    "family": "field",
                    "field": "spec",
                    "what": f"array{i}.{name}",
                    "offset": offset,
                    "width": width,
                    "value": v,
                    "auth": auth,
                }
                for v in _field_values(width)
            ]
    return out


def _swap_sweep(shape: Shape, auth: bool) -> list[Mutation]:
    out: list[Mutation] = [
        {"family": "swap", "how": h, "blob": j, "auth": auth}
        for h in ("dup_blob", "drop_blob", "add_blob", "header_as_blob", "blob_as_header")
        for j in range(shape.n_blobs)
    ]
    out.append({"family": "swap", "how": "swap_blobs", "auth": auth})
    out += [
        {"family": "swap", "how": "donor_header", "source": d, "auth": auth} for d in shape.donors
    ]
    sources = list(shape.alt_blobs) + [
        f"{d}_{j}" for d in shape.donors for j in range(shape.n_blobs)
    ]
    out += [
        {"family": "swap", "how": "alt", "blob": j, "source": s, "auth": auth}
        for j in range(shape.n_blobs)
        for s in sources
    ]
    return out


def _ct_swap_sweep(shape: Shape) -> list[Mutation]:
    out: list[Mutation] = []
    for j in range(shape.n_cts):
        out += [
            {"family": "ct_swap", "how": h, "ct": j}
            for h in ("dup", "drop", "add", "context_as_ct", "ct_as_context", "empty")
        ]
        out += [{"family": "ct_swap", "how": "alt", "ct": j, "source": s} for s in shape.alt_cts]
        out += [
            {"family": "ct_swap", "how": "swap", "ct": j, "with": k}
            for k in range(j + 1, shape.n_cts)
        ]
    return out


def _shape_args() -> list[list[list[int]]]:
    return [[], [[64, 65]], [[65, 64], [10]], [[64, 65], [10], [1]], [[4170]], [[0], [10]]]


def hot_sweep_indices(target: str, shape: Shape, *, first_bytes: int = 24) -> list[int]:
    """Sweep indices of the bit flips in the framing of the first and last ciphertext.

    The first ``first_bytes`` bytes of a serialized ``CKKSVectorProto`` hold the protobuf
    keys and lengths and the SEAL header: the region where one flipped bit used to reach
    native code (authenticated flips only for the envelope targets).
    """
    last = (shape.n_blobs or shape.n_cts) - 1
    out = []
    for i, m in enumerate(sweep_mutations(target, shape)):
        where = m.get("blob", m.get("ct"))
        if (
            m["family"] in ("blob", "ct")
            and m.get("op") == "bitflip"
            and m.get("auth", True)
            and where in (0, last)
            and m["pos"] < first_bytes
        ):
            out.append(i)
    return out


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _position(rng: np.random.Generator, limit: int) -> int:
    hot = min(HOT_BYTES, limit)
    return int(rng.integers(hot if rng.random() < 0.5 else min(limit, CT_PREFIX)))


def random_mutation(target: str, seed: int, index: int, shape: Shape) -> Mutation:
    """Draw mutation ``index`` of random stream ``seed`` (same inputs, same mutation)."""
    rng = np.random.default_rng([int(seed), TARGETS.index(target), int(index)])
    if target in ENVELOPE_TARGETS:
        return _random_envelope(rng, target, shape)
    return _random_holder(rng, shape)


def _weighted(rng: np.random.Generator, weights: dict[str, int]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def _random_envelope(rng: np.random.Generator, target: str, shape: Shape) -> Mutation:
    weights = dict(ENVELOPE_WEIGHTS)
    if target != "client":
        weights.pop("args")
    kind = _weighted(rng, weights)
    auth = bool(rng.random() < 0.75)
    hdr = shape.header
    j = int(rng.integers(shape.n_blobs))
    value = _pick(rng, ("zero", "ff", "random", int(rng.integers(256))))
    m: Mutation
    if kind == "header_bitflip":
        limit = hdr["body"] if auth else hdr["length"]
        m = {
            "family": "header",
            "op": "bitflip",
            "pos": int(rng.integers(limit)),
            "bit": int(rng.integers(8)),
        }
    elif kind == "header_byteset":
        limit = hdr["body"] if auth else hdr["length"]
        m = {"family": "header", "op": "byteset", "pos": int(rng.integers(limit)), "value": value}
    elif kind == "header_truncate":
        m = {"family": "header", "op": "truncate", "spec": _trunc_spec(rng)}
    elif kind == "header_extend":
        m = {
            "family": "header",
            "op": "extend",
            "count": int(_pick(rng, EXTEND_COUNTS)),
            "fill": _pick(rng, (*FILL_VALUES, "self")),
        }
    elif kind == "blob_bitflip":
        m = {
            "family": "blob",
            "blob": j,
            "op": "bitflip",
            "pos": _position(rng, CT_PREFIX),
            "bit": int(rng.integers(8)),
        }
    elif kind == "blob_byteset":
        m = {
            "family": "blob",
            "blob": j,
            "op": "byteset",
            "pos": _position(rng, CT_PREFIX),
            "value": value,
        }
    elif kind == "blob_span":
        m = {
            "family": "blob",
            "blob": j,
            "op": "span",
            "pos": _position(rng, CT_PREFIX),
            "count": int(rng.integers(2, 65)),
            "fill": _pick(rng, FILL_VALUES),
        }
    elif kind == "blob_truncate":
        m = {"family": "blob", "blob": j, "op": "truncate", "spec": _trunc_spec(rng)}
    elif kind == "blob_extend":
        m = {
            "family": "blob",
            "blob": j,
            "op": "extend",
            "count": int(_pick(rng, EXTEND_COUNTS)),
            "fill": _pick(rng, (*FILL_VALUES, "self")),
        }
    elif kind == "field":
        name = _pick(rng, list(HEADER_FIELDS))
        m = {
            "family": "field",
            "field": name,
            "value": int(_pick(rng, _field_values(HEADER_FIELDS[name][1]))),
        }
    elif kind == "spec":
        m = _pick(rng, _field_sweep(hdr, auth))
    elif kind == "reshape":
        m = {"family": "reshape", "how": _pick(rng, RESHAPES)}
    elif kind == "pb":
        op, arg = _pick(rng, _pb_ops(shape))
        m = {"family": "blob", "blob": j, "op": "pb", "pb": op, "arg": arg}
    elif kind == "seal":
        name = _pick(rng, list(SEAL_FIELDS))
        m = {
            "family": "blob",
            "blob": j,
            "op": "seal",
            "field": name,
            "value": int(_pick(rng, SEAL_VALUES[name])),
        }
    elif kind == "swap":
        m = dict(_pick(rng, _swap_sweep(shape, auth)))
    elif kind == "container":
        m = {"family": "container", "how": _pick(rng, CONTAINERS)}
    else:
        m = dict(
            _pick(
                rng,
                [{"family": "args", "total_weight": w} for w in WEIGHT_VALUES]
                + [{"family": "args", "shapes": s} for s in _shape_args()],
            )
        )
    if m["family"] not in {"container", "args"}:
        m["auth"] = auth
    if target == "coordinator" and rng.random() < 0.3:
        m["mutated_first"] = True
    return m


def _trunc_spec(rng: np.random.Generator) -> dict[str, Any]:
    r = rng.random()
    if r < 0.4:
        return {"n": int(_pick(rng, TRUNCATE_ABS))}
    if r < 0.7:
        return {"minus": int(_pick(rng, TRUNCATE_MINUS))}
    return {"frac": round(float(rng.random()), 4)}


def _random_holder(rng: np.random.Generator, shape: Shape) -> Mutation:
    kind = _weighted(rng, HOLDER_WEIGHTS)
    j = int(rng.integers(shape.n_cts))
    value = _pick(rng, ("zero", "ff", "random", int(rng.integers(256))))
    fill = _pick(rng, (*FILL_VALUES, "self"))
    m: Mutation
    if kind == "ct_bitflip":
        m = {
            "family": "ct",
            "ct": j,
            "op": "bitflip",
            "pos": _position(rng, CT_PREFIX),
            "bit": int(rng.integers(8)),
        }
    elif kind == "ct_byteset":
        m = {
            "family": "ct",
            "ct": j,
            "op": "byteset",
            "pos": _position(rng, CT_PREFIX),
            "value": value,
        }
    elif kind == "ct_span":
        m = {
            "family": "ct",
            "ct": j,
            "op": "span",
            "pos": _position(rng, CT_PREFIX),
            "count": int(rng.integers(2, 65)),
            "fill": _pick(rng, FILL_VALUES),
        }
    elif kind == "ct_truncate":
        m = {"family": "ct", "ct": j, "op": "truncate", "spec": _trunc_spec(rng)}
    elif kind == "ct_extend":
        m = {
            "family": "ct",
            "ct": j,
            "op": "extend",
            "count": int(_pick(rng, EXTEND_COUNTS)),
            "fill": fill,
        }
    elif kind == "pb":
        op, arg = _pick(rng, _pb_ops(shape))
        m = {"family": "ct", "ct": j, "op": "pb", "pb": op, "arg": arg}
    elif kind == "seal":
        name = _pick(rng, list(SEAL_FIELDS))
        m = {
            "family": "ct",
            "ct": j,
            "op": "seal",
            "field": name,
            "value": int(_pick(rng, SEAL_VALUES[name])),
        }
    elif kind == "ctx_bitflip":
        m = {
            "family": "ctx",
            "op": "bitflip",
            "pos": int(rng.integers(min(shape.ctx_len, CT_PREFIX))),
            "bit": int(rng.integers(8)),
        }
    elif kind == "ctx_byteset":
        m = {
            "family": "ctx",
            "op": "byteset",
            "pos": int(rng.integers(min(shape.ctx_len, CT_PREFIX))),
            "value": value,
        }
    elif kind == "ctx_truncate":
        m = {"family": "ctx", "op": "truncate", "spec": _trunc_spec(rng)}
    elif kind == "ctx_extend":
        m = {"family": "ctx", "op": "extend", "count": int(_pick(rng, EXTEND_COUNTS)), "fill": fill}
    elif kind == "ctx_alt":
        m = {
            "family": "ctx_alt",
            "source": _pick(rng, [s for s in CTX_ALTS if s in shape.alt_contexts or s == "empty"]),
        }
    elif kind == "meta":
        name = _pick(rng, ("rows", "features", "layer"))
        values = {"rows": ROWS_VALUES, "features": FEATURES_VALUES, "layer": LAYER_VALUES}[name]
        m = {"family": "meta", "field": name, "value": int(_pick(rng, values))}
    elif kind == "ct_swap":
        m = dict(_pick(rng, _ct_swap_sweep(shape)))
    elif kind == "ctx_pb":
        op = _pick(rng, list(CTX_PB_VALUES))
        m = {"family": "ctx_pb", "op": op, "value": _pick(rng, CTX_PB_VALUES[op])}
    else:
        m = {"family": "other_layout"}
    return m


def mutation_for(target: str, seed: int | str, index: int, shape: Shape) -> Mutation:
    """Return the mutation of trial ``(target, seed, index)``.

    Raises:
        MutationError: ``seed == "sweep"`` and ``index`` is past the sweep's end.
    """
    if seed == "sweep":
        sweep = sweep_mutations(target, shape)
        if not 0 <= index < len(sweep):
            raise MutationError(f"sweep of {target} has {len(sweep)} trials; got index {index}")
        return sweep[index]
    return random_mutation(target, int(seed), index, shape)


def describe(m: Mutation) -> str:
    """One-line human description of a mutation (for reports)."""
    parts = [str(m["family"])]
    for key in (
        "op",
        "pb",
        "field",
        "what",
        "how",
        "blob",
        "ct",
        "pos",
        "bit",
        "value",
        "arg",
        "source",
        "spec",
        "count",
        "fill",
        "total_weight",
        "shapes",
    ):
        if key in m:
            parts.append(f"{key}={m[key]}")
    if "auth" in m:
        parts.append("auth" if m["auth"] else "unauth")
    if m.get("mutated_first"):
        parts.append("mutated_first")
    return " ".join(parts)


__all__ = [
    "Shape",
    "describe",
    "hot_sweep_indices",
    "mutation_for",
    "random_mutation",
    "sweep_mutations",
]
