"""Fuzz fixtures: one key set, good payloads and encrypted batches, written once to a directory.

Built once per campaign / pytest session (:func:`build_fixtures`, needs TenSEAL) and then
read by every worker and by the parent (:func:`load_envelope_fixture`,
:func:`load_holder_fixture`: numpy and bytes only). CKKS encryption is randomised, so the
exact bytes differ between fixture sets; a trial ``(target, seed, index)`` reproduces
exactly against the same fixture directory, which a campaign keeps next to its report.

Contents of ``<dir>``:

* ``keys/``: a default fedai CKKS key set (N=8192, [60, 50, 60], symmetric).
* ``envelope.npz``: contributions ``a`` (weight 3) and ``b`` (weight 5) of a two-array
  model (64x65 float32 + 10 float64 = 4170 values, two ciphertexts), their sum ``agg``,
  and ``alt_*`` blobs: legitimate ciphertexts an insider could send instead (another
  scale, a lower level, three polynomials, another key set, values beyond the bound, the
  wrong slot count), each made for ciphertext position 0 (4096 values) and 1 (74 values).
* ``holder.npz``: a querier's public context, its secret context (for the sanity check),
  ``alt`` contexts, the encrypted batch (2 rows x 4 features) in both layouts and
  per-layout ``alt`` ciphertexts; the two served layers (4 -> 3 ReLU, 3 -> 2).
* ``meta.json``: weights, shapes, MAC key (test keys only), lengths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_mutations import EnvelopeFixture, HolderFixture, header_layout
from fuzz_plans import Shape

SHAPES: list[tuple[int, ...]] = [(64, 65), (10,)]
DTYPES = (np.float32, np.float64)
WEIGHT_A, WEIGHT_B = 3.0, 5.0
HOLDER_ROWS, HOLDER_FEATURES = 2, 4
ALT_NAMES = ("scale30", "lowlevel", "size3", "foreign", "huge", "short")
HOLDER_ALT_NAMES = ("scale30", "lowlevel", "size3", "foreign", "short", "other_layout")


def _model(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.uniform(-1.0, 1.0, size=s).astype(d) for s, d in zip(SHAPES, DTYPES, strict=True)]


def _pack(prefix: str, payload: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}_{i}": np.asarray(a, dtype=np.uint8) for i, a in enumerate(payload)}


def _unpack(data: Any, prefix: str) -> list[np.ndarray]:
    out = []
    i = 0
    while f"{prefix}_{i}" in data:
        out.append(np.array(data[f"{prefix}_{i}"], dtype=np.uint8))
        i += 1
    return out


def _bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8).copy()


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save: Any = np.savez  # numpy's stubs would let ** also fill allow_pickle
    save(path, **arrays)


def build_fixtures(out: Path) -> Path:
    """Create keys, payloads and batches under ``out`` (fresh randomness every call).

    Returns:
        ``out``.
    """
    import tenseal as ts

    from fedai.crypto.ckks import CkksCodec, CkksSum
    from fedai.crypto.keys import create_keys, load_client_bundle, load_coordinator_bundle

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250901)
    create_keys(out / "keys", overwrite=True)
    create_keys(out / "foreign_keys", overwrite=True)
    client = load_client_bundle(out / "keys")
    foreign = load_client_bundle(out / "foreign_keys")
    codec = CkksCodec(client)
    summer = CkksSum(load_coordinator_bundle(out / "keys"))
    model_a, model_b = _model(rng), _model(rng)
    a = codec.encode(model_a, WEIGHT_A)
    b = codec.encode(model_b, WEIGHT_B)
    agg = summer.sum([a, b])
    expected = codec.decode(agg, WEIGHT_A + WEIGHT_B, SHAPES)

    arrays: dict[str, np.ndarray] = {**_pack("a", a), **_pack("b", b), **_pack("agg", agg)}
    ctx = client._context
    sizes = [4096, sum(int(np.prod(s)) for s in SHAPES) - 4096]
    for j, size in enumerate(sizes):
        values = rng.uniform(-1.0, 1.0, size)
        arrays[f"alt_scale30_{j}"] = _bytes(ts.ckks_vector(ctx, values, scale=2.0**30).serialize())
        arrays[f"alt_lowlevel_{j}"] = _bytes((ts.ckks_vector(ctx, values) * 1.0).serialize())
        ctx.auto_relin = False
        try:
            vec = ts.ckks_vector(ctx, values)
            arrays[f"alt_size3_{j}"] = _bytes((vec * vec).serialize())
        finally:
            ctx.auto_relin = True
        arrays[f"alt_foreign_{j}"] = _bytes(ts.ckks_vector(foreign._context, values).serialize())
        arrays[f"alt_huge_{j}"] = _bytes(ts.ckks_vector(ctx, np.full(size, 1e6)).serialize())
        arrays[f"alt_short_{j}"] = _bytes(ts.ckks_vector(ctx, values[:10]).serialize())
    for i, e in enumerate(expected):
        arrays[f"expected_{i}"] = np.asarray(e)
    _save(out / "envelope.npz", arrays)

    holder_meta = _build_holder(out, rng)
    meta = {
        "shapes": [list(s) for s in SHAPES],
        "weights": {"a": WEIGHT_A, "b": WEIGHT_B},
        "mac_key": client._mac_key.hex(),
        "header_layout": header_layout(a[0].tobytes()),
        "update_bound": codec.update_bound,
        **holder_meta,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def _build_holder(out: Path, rng: np.random.Generator) -> dict[str, Any]:
    import tenseal as ts

    from fedai.inference import CkksProfile, Layout, Querier

    querier = Querier()
    foreign = Querier()
    other = Querier(profile=CkksProfile(coeff_mod_bit_sizes=(60, 40, 60)))
    w0, b0 = rng.normal(size=(3, HOLDER_FEATURES)), rng.normal(size=3)
    w1, b1 = rng.normal(size=(2, 3)), rng.normal(size=2)
    x = rng.normal(size=(HOLDER_ROWS, HOLDER_FEATURES))
    arrays: dict[str, np.ndarray] = {"w0": w0, "b0": b0, "w1": w1, "b1": b1, "x": x}
    ctx = querier._context
    arrays["context"] = _bytes(querier.public_context())
    arrays["secret_context"] = _bytes(ctx.serialize(save_secret_key=True))
    arrays["altctx_private"] = arrays["secret_context"]
    arrays["altctx_other_profile"] = _bytes(other.public_context())
    arrays["altctx_public_key"] = _bytes(
        ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=True,
        )
    )
    batches = {lay: querier.encrypt(x, layout=lay) for lay in (Layout.ROWS, Layout.COLUMNS)}
    n_cts = {}
    for lay, batch in batches.items():
        n_cts[lay.value] = len(batch.ciphertexts)
        for j, ct in enumerate(batch.ciphertexts):
            arrays[f"{lay.value}_ct{j}"] = _bytes(ct)
        size = HOLDER_ROWS * HOLDER_FEATURES if lay is Layout.ROWS else HOLDER_ROWS
        values = rng.normal(size=size)
        alt = {
            "scale30": ts.ckks_vector(ctx, values, scale=2.0**30).serialize(),
            "lowlevel": (ts.ckks_vector(ctx, values) * 1.0).serialize(),
            "foreign": ts.ckks_vector(foreign._context, values).serialize(),
            "short": ts.ckks_vector(ctx, np.append(values, 1.0)).serialize(),
        }
        ctx.auto_relin = False
        try:
            vec = ts.ckks_vector(ctx, values)
            alt["size3"] = (vec * vec).serialize()
        finally:
            ctx.auto_relin = True
        other_layout = Layout.COLUMNS if lay is Layout.ROWS else Layout.ROWS
        alt["other_layout"] = batches_ct(querier, x, other_layout)
        for name, blob in alt.items():
            arrays[f"{lay.value}_alt_{name}"] = _bytes(blob)
    arrays["expected0"] = x @ w0.T + b0
    _save(out / "holder.npz", arrays)
    return {
        "holder": {
            "rows": HOLDER_ROWS,
            "features": HOLDER_FEATURES,
            "n_cts": n_cts,
            "ctx_len": int(arrays["context"].size),
        }
    }


def batches_ct(querier: Any, x: np.ndarray, layout: Any) -> bytes:
    """First ciphertext of ``x`` encrypted in ``layout``."""
    ct: bytes = querier.encrypt(x, layout=layout).ciphertexts[0]
    return ct


def read_meta(fixture_dir: Path) -> dict[str, Any]:
    """The fixture set's ``meta.json``."""
    meta: dict[str, Any] = json.loads((fixture_dir / "meta.json").read_text())
    return meta


def load_envelope_fixture(fixture_dir: Path, target: str) -> EnvelopeFixture:
    """The envelope mutation base for ``coordinator`` (contribution a) or ``client`` (agg)."""
    meta = read_meta(fixture_dir)
    with np.load(fixture_dir / "envelope.npz") as data:
        a, b, agg = _unpack(data, "a"), _unpack(data, "b"), _unpack(data, "agg")
        alt = {
            k[len("alt_") :]: np.array(data[k]).tobytes()
            for k in data.files
            if k.startswith("alt_")
        }
    shapes = [tuple(s) for s in meta["shapes"]]
    weights = meta["weights"]
    if target == "coordinator":
        return EnvelopeFixture(
            payload=a,
            donors={"other": b, "agg": agg},
            alt_blobs=alt,
            mac_key=bytes.fromhex(meta["mac_key"]),
            total_weight=weights["a"] + weights["b"],
            shapes=shapes,
        )
    return EnvelopeFixture(
        payload=agg,
        donors={"a": a, "b": b},
        alt_blobs=alt,
        mac_key=bytes.fromhex(meta["mac_key"]),
        total_weight=weights["a"] + weights["b"],
        shapes=shapes,
    )


def load_expected_average(fixture_dir: Path) -> list[np.ndarray]:
    """The decoded aggregate of the unmodified fixtures."""
    with np.load(fixture_dir / "envelope.npz") as data:
        return [np.array(data[f"expected_{i}"]) for i in range(len(SHAPES))]


def load_holder_arrays(fixture_dir: Path) -> dict[str, np.ndarray]:
    """Everything in ``holder.npz``."""
    with np.load(fixture_dir / "holder.npz") as data:
        return {k: np.array(data[k]) for k in data.files}


def load_holder_fixture(fixture_dir: Path, target: str) -> HolderFixture:
    """The holder mutation base for ``holder_rows`` or ``holder_columns``."""
    layout = target.removeprefix("holder_")
    meta = read_meta(fixture_dir)["holder"]
    data = load_holder_arrays(fixture_dir)
    cts = tuple(data[f"{layout}_ct{j}"].tobytes() for j in range(meta["n_cts"][layout]))
    prefix = f"{layout}_alt_"
    return HolderFixture(
        layout=layout,
        rows=int(meta["rows"]),
        features=int(meta["features"]),
        context=data["context"].tobytes(),
        ciphertexts=cts,
        alt_contexts={
            k[len("altctx_") :]: v.tobytes() for k, v in data.items() if k.startswith("altctx_")
        },
        alt_cts={k[len(prefix) :]: v.tobytes() for k, v in data.items() if k.startswith(prefix)},
    )


def load_shape(fixture_dir: Path, target: str) -> Shape:
    """The lengths and counts the mutation plans of ``target`` depend on."""
    meta = read_meta(fixture_dir)
    if target in ("coordinator", "client"):
        fx = load_envelope_fixture(fixture_dir, target)
        return Shape(
            header=meta["header_layout"],
            n_blobs=len(fx.payload) - 1,
            alt_blobs=tuple(sorted(fx.alt_blobs)),
            donors=tuple(sorted(fx.donors)),
        )
    hfx = load_holder_fixture(fixture_dir, target)
    return Shape(
        n_cts=len(hfx.ciphertexts),
        ctx_len=len(hfx.context),
        alt_contexts=tuple(sorted(hfx.alt_contexts)),
        alt_cts=tuple(sorted(hfx.alt_cts)),
    )


__all__ = [
    "build_fixtures",
    "load_envelope_fixture",
    "load_expected_average",
    "load_holder_arrays",
    "load_holder_fixture",
    "load_shape",
    "read_meta",
]
