"""Side-by-side secure aggregation on one model: unpacked phe, packed Paillier, CKKS, plain.

Usage::

    .venv/bin/python experiments/bench/paillier.py --out experiments/bench/results/paillier.json
    .venv/bin/python experiments/bench/paillier.py --quick      # smaller, for development
    .venv/bin/python experiments/bench/paillier.py --decrypt-only \
        --out experiments/bench/results/paillier_decrypt.json   # why decryption gains less

On the quickstart MLP (digits, hidden=128: 26,122 parameters) with ``K`` clients of
integer weights (example counts), it reports per parameter, wall and CPU time:

* **unpacked phe** (a sample of parameters; ``phe``'s ``encrypt(float)``, one ciphertext
  per value with ``EncodedNumber`` exponents, ``EncryptedNumber`` addition, ``decrypt``),
  2048-bit keys: the reference the issue compares against;
* **packed Paillier** (:class:`fedai.crypto.PaillierCodec` / ``PaillierSum``: stochastic
  quantisation to ``r`` bits, BatchCrypt packing, CRT encryption, validated ciphertexts)
  with 2048- and 3072-bit keys, with ``workers=1`` (one process) and ``workers=2`` (a
  process pool on both cores), and encryption from precomputed obfuscators;
* **CKKS** (:class:`fedai.crypto.CkksCodec` / ``CkksSum``, the default key profile);
* **plain** FedAvg (:class:`fedai.aggregation.PlainCodec`).

Client encode, coordinator check + sum (per parameter per client), client decode, and
bytes on the wire per parameter (one contribution; the aggregate). Then the raw Paillier
primitives (``phe`` vs fedai's gmpy2 CRT path) per ciphertext, and the FL round time of
the quickstart under each scheme against plaintext: mean seconds per round over rounds
2..R (round 1 has no decode and loads data/keys), ``fedai simulate``'s in-process backend.

**Decryption, explained** (``decrypt_analysis``; ``--decrypt-only`` runs just this): a
packed ciphertext costs one CRT exponentiation pair, exactly what ``phe`` pays for one
unpacked value, so packing can speed decryption up by about the values per ciphertext
``k = floor((|n| - 1) / (r + h))`` and no more (encryption gains another 3.5x because
``phe`` does not encrypt through the CRT). The section times, in one process and in CPU
seconds (the machine is shared), ``phe``'s decryption per value, fedai's per ciphertext
(exponentiations, validation, unpacking), and the client's decode per parameter for
several slot layouts ``(r, W)``, and predicts each layout's speedup as ``k`` times the
per-ciphertext ratio.

Issue 11 targets: packed vs unpacked per parameter >= 80x faster (encrypt); packed client
encrypt <= 150 us/param with 2048-bit keys on 2 cores; wire bytes below CKKS's.
The machine is shared: read wall time with the load average recorded in the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import phe

from fedai.aggregation import PlainCodec, PlainSum
from fedai.crypto import (
    CkksCodec,
    CkksSum,
    PaillierCodec,
    PaillierSum,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
    load_paillier_client_bundle,
    load_paillier_coordinator_bundle,
)

TARGETS = {
    "packed_vs_unpacked_encrypt_speedup": 80.0,
    "packed_2048_encrypt_us_per_param_2_cores": 150.0,
}
TARGET_DECRYPT_SPEEDUP = 80.0
QUICKSTART = Path(__file__).resolve().parents[1] / "quickstart.toml"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _model_weights(k: int, seed: int) -> tuple[list[list[np.ndarray]], int]:
    """``k`` perturbed copies of the quickstart MLP's weights (the real registry model)."""
    from fedai.models import ModelSpec, build_model, get_weights

    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=128)
    base = get_weights(build_model(spec, seed=seed))
    rng = np.random.default_rng(seed)
    clients = [
        [(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in base] for _ in range(k)
    ]
    return clients, sum(w.size for w in base)


def _per(seconds: float, n: float) -> float:
    return seconds * 1e6 / n


# ---------------------------------------------------------------------- the seam, per scheme
def _bench_seam(
    name: str,
    codec: Any,
    summer: Any,
    clients: list[list[np.ndarray]],
    weights: Sequence[float],
    n_params: int,
    *,
    reference: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    shapes = [w.shape for w in clients[0]]
    k = len(clients)
    codec.encode(clients[0], weights[0])  # warm-up (imports, pool start)
    enc_w, enc_c, payloads = [], [], []
    for w, n in zip(clients, weights, strict=True):
        p, tw, tc = _timed(functools.partial(codec.encode, w, n))
        payloads.append(p)
        enc_w.append(tw)
        enc_c.append(tc)

    def check_all() -> None:
        for p in payloads:
            summer.check(p, shapes)

    _, chk_w, chk_c = _timed(check_all)
    agg, sum_w, sum_c = _timed(lambda: summer.sum(payloads))
    total = float(sum(weights))
    dec, dec_w, dec_c = _timed(lambda: codec.decode(agg, total, shapes))
    row: dict[str, Any] = {
        "scheme": name,
        "encrypt_us_per_param": {
            "wall": _per(statistics.median(enc_w), n_params),
            "cpu_this_process": _per(statistics.median(enc_c), n_params),
        },
        "check_plus_sum_us_per_param_per_client": {
            "wall": _per(chk_w + sum_w, n_params * k),
            "cpu": _per(chk_c + sum_c, n_params * k),
        },
        "decrypt_us_per_param": {
            "wall": _per(dec_w, n_params),
            "cpu_this_process": _per(dec_c, n_params),
        },
        "wire_bytes_per_param": sum(a.nbytes for a in payloads[0]) / n_params,
        "aggregate_bytes_per_param": sum(a.nbytes for a in agg) / n_params,
        "arrays_per_payload": len(payloads[0]),
    }
    if reference is not None:
        row["max_abs_diff_vs_plain"] = max(
            float(np.max(np.abs(a.astype(np.float64) - b)))
            for a, b in zip(dec, reference, strict=True)
        )
    return row


def _plain_reference(
    clients: list[list[np.ndarray]], weights: Sequence[float], n_params: int
) -> tuple[dict[str, Any], list[np.ndarray]]:
    codec, summer = PlainCodec(round_decimals=None), PlainSum()
    row = _bench_seam("plain", codec, summer, clients, weights, n_params)
    payloads = [codec.encode(w, n) for w, n in zip(clients, weights, strict=True)]
    ref = codec.decode(summer.sum(payloads), float(sum(weights)), [w.shape for w in clients[0]])
    return row, [a.astype(np.float64) for a in ref]


def _bench_unpacked_phe(
    clients: list[list[np.ndarray]], weights: Sequence[float], sample: int, key_bits: int
) -> dict[str, Any]:
    """``phe`` as documented: one EncryptedNumber per (weighted) float value."""
    public, private = phe.generate_paillier_keypair(n_length=key_bits)
    flat = [np.concatenate([w.ravel() for w in c]).astype(np.float64)[:sample] for c in clients]
    values = [[float(n * v) for v in f] for f, n in zip(flat, weights, strict=True)]
    enc, enc_w, enc_c = _timed(lambda: [[public.encrypt(v) for v in vs] for vs in values])
    n_enc = sample * len(clients)

    def add_all() -> list[Any]:
        acc = list(enc[0])
        for other in enc[1:]:
            acc = [a + b for a, b in zip(acc, other, strict=True)]
        return acc

    agg, sum_w, sum_c = _timed(add_all)
    _, dec_w, dec_c = _timed(lambda: [private.decrypt(x) for x in agg])
    nbytes = (2 * key_bits + 7) // 8  # the ciphertext integer; plus its exponent (an int)
    return {
        "scheme": f"phe unpacked ({key_bits}-bit, EncodedNumber floats)",
        "sample_params": sample,
        "encrypt_us_per_param": {"wall": _per(enc_w, n_enc), "cpu": _per(enc_c, n_enc)},
        "sum_us_per_param_per_client": {"wall": _per(sum_w, n_enc), "cpu": _per(sum_c, n_enc)},
        "decrypt_us_per_param": {"wall": _per(dec_w, sample), "cpu": _per(dec_c, sample)},
        "wire_bytes_per_param": nbytes + 4,
        "exponents_seen": sorted({x.exponent for x in agg})[:5],
    }


def _bench_packed(
    key_dir: Path,
    clients: list[list[np.ndarray]],
    weights: Sequence[float],
    n_params: int,
    reference: list[np.ndarray],
    workers: int,
) -> dict[str, Any]:
    codec = PaillierCodec(load_paillier_client_bundle(key_dir), workers=workers, prefetch=False)
    summer = PaillierSum(load_paillier_coordinator_bundle(key_dir))
    bits = codec._public.bits
    try:
        row = _bench_seam(
            f"paillier packed ({bits}-bit, workers={workers})",
            codec,
            summer,
            clients,
            weights,
            n_params,
            reference=reference,
        )
        cts = codec.layout.plaintexts_for(n_params)
        if workers > 1:  # obfuscators drawn ahead of time (e.g. while the client trains)
            codec.precompute(cts)
            codec._take_obfuscators(0)  # wait until the stock is full
            _, pre_w, _ = _timed(lambda: codec.encode(clients[0], weights[0]))
            row["encrypt_precomputed_us_per_param"] = _per(pre_w, n_params)
    finally:
        codec.close()
    lay = codec.layout
    row.update(
        key_bits=bits,
        quantization_bits=lay.value_bits,
        headroom_bits=lay.headroom_bits,
        slot_bits=lay.slot_bits,
        values_per_ciphertext=lay.slots,
        ciphertexts=cts,
        quantization_step=codec.update_bound / lay.levels,
    )
    return row


# ---------------------------------------------------------------------- raw primitives
def _primitives(key_bits: int, repeats: int) -> dict[str, Any]:
    from fedai.crypto.paillier_math import SecretKey

    public, private = phe.generate_paillier_keypair(n_length=key_bits)
    secret = SecretKey(private.p, private.q)
    m = int.from_bytes(os.urandom(key_bits // 8 - 1), "big")
    c = secret.encrypt(m)
    obf = secret.obfuscators(repeats)

    def per_call(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats * 1e3

    it = iter(obf)
    return {
        "key_bits": key_bits,
        "phe_raw_encrypt_ms": per_call(lambda: public.raw_encrypt(m)),
        "fedai_crt_encrypt_ms": per_call(lambda: secret.encrypt(m)),
        "fedai_encrypt_with_precomputed_obfuscator_ms": per_call(
            lambda: secret.encrypt(m, next(it))
        ),
        "phe_raw_decrypt_ms": per_call(lambda: private.raw_decrypt(int(c))),
        "fedai_crt_decrypt_ms": per_call(lambda: secret.decrypt(c)),
        "add_mulmod_us": per_call(lambda: c * c % secret.public.n2) * 1e3,
        "validate_gcd_us": per_call(lambda: gmpy2.gcd(c, secret.public.n)) * 1e3,
    }


# ---------------------------------------------------------------------- decryption, explained
#: (quantization_bits, max_total_weight) pairs: the default, the quickstart's own need (10
#: digits clients hold 1,439 training examples: 11 headroom bits) and denser layouts.
LAYOUTS = ((32, 2**20), (32, 1439), (24, 1439), (16, 1439), (16, 512), (12, 1439))


def _decrypt_analysis(
    key_dir: Path,
    clients: list[list[np.ndarray]],
    reference_clients: int,
    sample: int,
    repeats: int,
) -> dict[str, Any]:
    """Per-ciphertext costs and the client decode per parameter across slot layouts.

    One process, CPU time, one key for both libraries. The aggregate of
    ``reference_clients`` clients (weights 200, 150, ...: inside every layout's headroom)
    is decoded and checked against the plain weighted average within the layout's grid.
    The machine is shared, so ``repeats`` passes interleave every measurement (``phe``,
    the raw CRT decryption, each layout's decode) and the medians are reported.
    """
    from fedai.crypto.paillier_math import SecretKey
    from fedai.crypto.quantize import pack, unpack

    client_bundle = load_paillier_client_bundle(key_dir)
    secret: SecretKey = client_bundle._secret
    public_phe = phe.PaillierPublicKey(int(secret.public.n))
    private_phe = phe.PaillierPrivateKey(public_phe, int(secret.p), int(secret.q))
    rng = np.random.default_rng(1)
    values = [float(v) for v in rng.normal(0, 0.1, sample) * 350]
    encrypted = [public_phe.encrypt(v) for v in values]
    probes = [
        secret.encrypt(int.from_bytes(os.urandom(secret.public.bits // 8 - 1), "big"))
        for _ in range(sample)
    ]
    raw = secret.public.serialize(probes)
    layout0 = PaillierCodec(client_bundle, workers=1, prefetch=False).layout
    top = np.uint64((1 << layout0.slot_bits) - 1)
    packed = pack(rng.integers(0, top, layout0.slots * sample, dtype=np.uint64), layout0)

    weights = [200 - 50 * i for i in range(reference_clients)]
    subset = clients[:reference_clients]
    shapes = [w.shape for w in subset[0]]
    n_params = sum(int(np.prod(s)) for s in shapes)
    reference = [
        sum(n * a.astype(np.float64) for n, a in zip(weights, arrays, strict=True)) / sum(weights)
        for arrays in zip(*subset, strict=True)
    ]
    prepared = []
    for bits, max_weight in LAYOUTS:
        codec = PaillierCodec(
            client_bundle,
            quantization_bits=bits,
            max_total_weight=max_weight,
            workers=1,
            prefetch=False,
            rng=np.random.default_rng(2),
        )
        summer = PaillierSum(
            load_paillier_coordinator_bundle(key_dir),
            quantization_bits=bits,
            max_total_weight=max_weight,
        )
        agg = summer.sum([codec.encode(w, n) for w, n in zip(subset, weights, strict=True)])
        prepared.append((codec, agg))

    def cpu_ms(fn: Callable[[], Any], count: int) -> float:
        c0 = time.process_time()
        fn()
        return (time.process_time() - c0) / count * 1e3

    timings: dict[str, list[float]] = {}
    for _ in range(repeats):
        for label, fn, count in (
            ("phe_decrypt_per_value", lambda: [private_phe.decrypt(x) for x in encrypted], sample),
            ("phe_raw_decrypt", lambda: [private_phe.raw_decrypt(int(c)) for c in probes], sample),
            ("fedai_crt_decrypt", lambda: [secret.decrypt(c) for c in probes], sample),
            (
                "fedai_one_half_powmod",
                lambda: [gmpy2.powmod(c, secret.p - 1, secret.p2) for c in probes],
                sample,
            ),
            ("fedai_validate", lambda: secret.public.parse(raw, sample, "probe"), sample),
            ("fedai_unpack", lambda: unpack(packed, layout0.slots * sample, layout0), sample),
        ):
            timings.setdefault(label, []).append(cpu_ms(fn, count))
        for (bits, max_weight), (codec, agg) in zip(LAYOUTS, prepared, strict=True):
            timings.setdefault(f"decode {bits}/{max_weight}", []).append(
                cpu_ms(lambda c=codec, a=agg: c.decode(a, float(sum(weights)), shapes), n_params)
            )
    med = {k: statistics.median(v) for k, v in timings.items()}
    per_ct = {f"{k}_ms_cpu": med[k] for k in timings if not k.startswith("decode")}
    per_ct["unpack_layout"] = (
        f"r={layout0.value_bits}, h={layout0.headroom_bits}, {layout0.slots} values"
    )
    phe_ms = med["phe_decrypt_per_value"]
    rows = []
    for (bits, max_weight), (codec, agg) in zip(LAYOUTS, prepared, strict=True):
        out = codec.decode(agg, float(sum(weights)), shapes)
        lay = codec.layout
        step = codec.update_bound / lay.levels
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(out, reference, strict=True))
        if diff > step + 1e-6:  # stochastic rounding moves each value by < 1 step
            raise RuntimeError(f"layout {bits}/{max_weight}: decoded {diff} from the average")
        decode_us = med[f"decode {bits}/{max_weight}"] * 1e3
        speedup = phe_ms * 1e3 / decode_us
        rows.append(
            {
                "quantization_bits": bits,
                "max_total_weight": max_weight,
                "headroom_bits": lay.headroom_bits,
                "slot_bits": lay.slot_bits,
                "values_per_ciphertext": lay.slots,
                "ciphertexts": lay.plaintexts_for(n_params),
                "quantization_step": step,
                "max_abs_diff_vs_plain_average": diff,
                "decode_us_per_param_cpu": decode_us,
                "decode_us_per_param_cpu_all_passes": [
                    t * 1e3 for t in timings[f"decode {bits}/{max_weight}"]
                ],
                "decrypt_speedup_vs_phe": speedup,
                "predicted_speedup": lay.slots * phe_ms / med["fedai_crt_decrypt"],
                "meets_80x": speedup >= TARGET_DECRYPT_SPEEDUP,
            }
        )
        codec.close()
        print(
            f"layout r={bits:>2} W={max_weight:>7}: {lay.slots:>3} values/ciphertext, "
            f"decode {decode_us:6.1f} us/param, {speedup:5.1f}x phe",
            flush=True,
        )
    plaintext_bits = secret.public.plaintext_bits
    return {
        "key_bits": secret.public.bits,
        "n_params": n_params,
        "phe_sample_values": sample,
        "passes": repeats,
        "per_ciphertext": per_ct,
        "layouts": rows,
        "why": (
            "a packed ciphertext costs one CRT exponentiation pair, the same as phe's "
            "decryption of one value, so the speedup is about the values per ciphertext "
            f"k = floor({plaintext_bits} / (r + h)); 80x needs k >= 80, i.e. r + h <= "
            f"{plaintext_bits // 80} bits; with the default r = 32, k <= "
            f"{plaintext_bits // 33} even with 1 headroom bit"
        ),
    }


# ---------------------------------------------------------------------- FL round time
def _round_times(
    schemes: dict[str, Path | None], rounds: int, overrides: Sequence[str]
) -> dict[str, Any]:
    from fedai.commands.simulate import simulate
    from fedai.config import ExperimentConfig

    cfg = ExperimentConfig.from_toml(QUICKSTART, [f"experiment.rounds={rounds}", *overrides])
    out: dict[str, Any] = {"rounds": rounds, "overrides": list(overrides), "runs": {}}
    for label, key_dir in schemes.items():
        scheme = label.split(" ")[0]
        section = replace(cfg.secure_aggregation, scheme=scheme, key_dir=str(key_dir or ""))
        scfg = cfg.replace(secure_aggregation=section)
        outcome, wall, _ = _timed(functools.partial(simulate, scfg, verbose=False))
        records = outcome.summary.rounds
        if any(r.status != "ok" for r in records):
            raise RuntimeError(f"{label}: a round failed: {[r.reason for r in records]}")
        per_round = statistics.fmean(r.seconds for r in records[1:])
        out["runs"][label] = {
            "s_per_round_2_to_R": per_round,
            "round_seconds": [r.seconds for r in records],
            "wall_s": wall,
            "final_accuracy": outcome.summary.final["accuracy"],
        }
        print(f"round time {label:<18} {per_round:8.2f} s/round", flush=True)
    plain = out["runs"]["none"]["s_per_round_2_to_R"]
    for row in out["runs"].values():
        row["ratio_vs_plain"] = row["s_per_round_2_to_R"] / plain
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON output (default: results/paillier.json)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=100, help="parameters for unpacked phe")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per round-time run")
    parser.add_argument("--quick", action="store_true", help="3 clients, no round time")
    parser.add_argument(
        "--decrypt-only",
        action="store_true",
        help="only the decryption analysis, 2048-bit key (default out: paillier_decrypt.json)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.sample = 3, 20
    if args.out is None:
        name = "paillier_decrypt.json" if args.decrypt_only else "paillier.json"
        args.out = Path("experiments/bench/results") / name
    repeats = 5 if args.quick else 20
    passes = 2 if args.quick else 5  # of the interleaved decryption analysis

    rng = np.random.default_rng(args.seed)
    weights = [float(n) for n in rng.integers(20, 400, args.clients)]
    clients, n_params = _model_weights(args.clients, args.seed)
    result: dict[str, Any] = {
        "benchmark": "secure aggregation side by side: phe unpacked, packed Paillier, CKKS",
        "model": "mlp(digits, hidden=128) (the quickstart model)",
        "n_params": n_params,
        "clients": args.clients,
        "client_weights": weights,
        "versions": {"phe": phe.__version__, "gmpy2": gmpy2.version()},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
            "load_average_at_start": os.getloadavg(),
        },
        "targets": TARGETS,
    }
    if args.decrypt_only:
        result["benchmark"] = "Paillier decryption: phe per value vs packed, across slot layouts"
        del result["targets"]
        with tempfile.TemporaryDirectory(prefix="fedai-bench-paillier-") as tmp:
            key_dir = Path(tmp) / "paillier-2048"
            create_keys(key_dir, scheme="paillier", key_bits=2048)
            result["decrypt_analysis"] = _decrypt_analysis(key_dir, clients, 2, args.sample, passes)
        return _write(result, args.out, "decrypt_analysis")
    with tempfile.TemporaryDirectory(prefix="fedai-bench-paillier-") as tmp:
        keys = {bits: Path(tmp) / f"paillier-{bits}" for bits in (2048, 3072)}
        for bits, key_dir in keys.items():
            create_keys(key_dir, scheme="paillier", key_bits=bits)
        ckks_dir = Path(tmp) / "ckks"
        create_keys(ckks_dir, scheme="ckks")

        plain_row, reference = _plain_reference(clients, weights, n_params)
        rows = [plain_row]
        print(f"plain    encode {plain_row['encrypt_us_per_param']['wall']:.3f} us/param")
        unpacked = _bench_unpacked_phe(clients, weights, args.sample, 2048)
        rows.append(unpacked)
        print(f"phe unpacked encrypt {unpacked['encrypt_us_per_param']['wall']:.0f} us/param")
        for key_dir in keys.values():
            for workers in (1, 2):
                row = _bench_packed(key_dir, clients, weights, n_params, reference, workers)
                rows.append(row)
                print(
                    f"{row['scheme']:<36} encrypt {row['encrypt_us_per_param']['wall']:7.1f} "
                    f"decrypt {row['decrypt_us_per_param']['wall']:7.1f} us/param, "
                    f"{row['wire_bytes_per_param']:.2f} B/param",
                    flush=True,
                )
        ckks = _bench_seam(
            "ckks (N=8192, [60,50,60], 2^40, symmetric)",
            CkksCodec(load_client_bundle(ckks_dir), round_decimals=None),
            CkksSum(load_coordinator_bundle(ckks_dir)),
            clients,
            weights,
            n_params,
            reference=reference,
        )
        rows.append(ckks)
        print(f"ckks encrypt {ckks['encrypt_us_per_param']['wall']:.2f} us/param")
        result["per_parameter"] = rows

        packed = {r["scheme"]: r for r in rows if r["scheme"].startswith("paillier")}
        p2048_1 = packed["paillier packed (2048-bit, workers=1)"]
        p2048_2 = packed["paillier packed (2048-bit, workers=2)"]
        unpacked_enc = unpacked["encrypt_us_per_param"]["wall"]
        result["summary"] = {
            "packed_vs_unpacked_encrypt_speedup_2048_1_process": unpacked_enc
            / p2048_1["encrypt_us_per_param"]["wall"],
            "packed_vs_unpacked_encrypt_speedup_2048_2_processes": unpacked_enc
            / p2048_2["encrypt_us_per_param"]["wall"],
            "packed_vs_unpacked_decrypt_speedup_2048_1_process": unpacked["decrypt_us_per_param"][
                "wall"
            ]
            / p2048_1["decrypt_us_per_param"]["wall"],
            "packed_2048_encrypt_us_per_param_2_cores": p2048_2["encrypt_us_per_param"]["wall"],
            "packed_2048_encrypt_us_per_param_1_core": p2048_1["encrypt_us_per_param"]["wall"],
            "packed_3072_encrypt_us_per_param_2_cores": packed[
                "paillier packed (3072-bit, workers=2)"
            ]["encrypt_us_per_param"]["wall"],
            "wire_bytes_per_param": {
                r["scheme"]: r["wire_bytes_per_param"] for r in rows if r["scheme"] != "plain"
            },
        }
        result["decrypt_analysis"] = _decrypt_analysis(keys[2048], clients, 2, args.sample, passes)
        result["primitives"] = [_primitives(bits, repeats) for bits in keys]
        if not args.quick:
            result["round_time"] = _round_times(
                {
                    "none": None,
                    "ckks": ckks_dir,
                    "paillier 2048": keys[2048],
                    "paillier 3072": keys[3072],
                },
                args.rounds,
                [],
            )
    return _write(result, args.out, "summary")


def _write(result: dict[str, Any], out: Path, show: str) -> int:
    result["machine"]["load_average_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result[show], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
