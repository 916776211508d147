"""Side-by-side CKKS vs plaintext secure-sum primitives, on real fedai models, JSON out.

Usage::

    .venv/bin/python experiments/bench/ckks.py --out experiments/bench/ckks.json

For each model size (the digits MLP at hidden=128, ~26k parameters, and hidden=280,
~100k) and each CKKS profile (default N=8192 [60,40,40,60]; aggregation-only [60,40]) it
times, with ``K`` clients and TenSEAL at 1 thread:

* client ``encode`` (flatten, scale by n_i, encrypt, serialize, tag) per parameter;
* coordinator ``check`` (authenticate) and ``sum`` (load + add + serialize) per parameter
  per client;
* client ``decode`` (load, decrypt, divide, bounds-check, round) per parameter;
* bytes on the wire per parameter (one contribution, and the aggregate);
* the same operations with ``PlainCodec`` / ``PlainSum`` on the same weights;
* the max |CKKS - plain| after rounding.

Wall and CPU (process) time are both reported: the machine is shared, and CPU time is
less sensitive to other tenants. Targets (issue 4): encrypt <= 3 us/param, sum <= 0.5
us/param/client, wire <= 85 B/param.

The end-to-end round-time ratio needs the Flower round loop; :func:`round_time_ratio`
takes a callable that runs one round for a scheme and is wired in once the spine exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedai.aggregation import PlainCodec, PlainSum
from fedai.crypto import (
    CkksCodec,
    CkksSum,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)

TARGETS = {
    "encrypt_us_per_param": 3.0,
    "sum_us_per_param_per_client": 0.5,
    "wire_bytes_per_param": 85.0,
}
# name -> (coeff_mod_bit_sizes, log2 scale). [60,40] at 2^30: N * bound <= 2^28.
PROFILES = {"default": ((60, 40, 40, 60), 40), "aggregation-only": ((60, 40), 30)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _model_weights(hidden: int, k: int, seed: int) -> tuple[list[list[np.ndarray]], int]:
    """``k`` perturbed copies of the digits MLP's weights (the real registry model)."""
    from fedai.models import ModelSpec, build_model, get_weights

    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=hidden)
    base = get_weights(build_model(spec, seed=seed))
    rng = np.random.default_rng(seed)
    clients = [
        [(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in base] for _ in range(k)
    ]
    return clients, sum(w.size for w in base)


def _bench_one(
    clients: list[list[np.ndarray]],
    n_params: int,
    weights: Sequence[float],
    bits: tuple[int, ...],
    scale_bits: int,
    key_root: Path,
) -> dict[str, Any]:
    shapes = [w.shape for w in clients[0]]
    k = len(clients)
    key_dir = key_root / "-".join(map(str, bits))
    _, t_keygen, _ = _timed(
        lambda: create_keys(key_dir, coeff_mod_bit_sizes=bits, global_scale=2.0**scale_bits)
    )
    codec = CkksCodec(load_client_bundle(key_dir))
    summer = CkksSum(load_coordinator_bundle(key_dir))
    assert not summer.is_private()

    enc_w, enc_c, payloads = [], [], []
    for w, n in zip(clients, weights, strict=True):
        p, tw, tc = _timed(lambda w=w, n=n: codec.encode(w, n))
        payloads.append(p)
        enc_w.append(tw)
        enc_c.append(tc)
    _, chk_w, chk_c = _timed(lambda: [summer.check(p) for p in payloads])
    agg, sum_w, sum_c = _timed(lambda: summer.sum(payloads))
    total = float(sum(weights))
    dec, dec_w, dec_c = _timed(lambda: codec.decode(agg, total, shapes))

    plain = PlainCodec()
    pp, penc_w, _ = _timed(
        lambda: [plain.encode(w, n) for w, n in zip(clients, weights, strict=True)]
    )
    psum = PlainSum()
    pagg, psum_w, _ = _timed(lambda: psum.sum(pp))
    ref, pdec_w, _ = _timed(lambda: plain.decode(pagg, total, shapes))
    err = max(
        float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(dec, ref, strict=True)
    )

    wire = sum(a.nbytes for a in payloads[0])
    per = 1e6 / n_params
    return {
        "coeff_mod_bit_sizes": list(bits),
        "scale_bits": scale_bits,
        "max_total_weight": codec.max_total_weight,
        "keygen_s": t_keygen,
        "n_ciphertexts": len(payloads[0]) - 1,
        "encrypt_us_per_param": {
            "wall": statistics.median(enc_w) * per,
            "cpu": statistics.median(enc_c) * per,
        },
        "check_us_per_param_per_client": {"wall": chk_w * per / k, "cpu": chk_c * per / k},
        "sum_us_per_param_per_client": {"wall": sum_w * per / k, "cpu": sum_c * per / k},
        "check_plus_sum_us_per_param_per_client": {
            "wall": (chk_w + sum_w) * per / k,
            "cpu": (chk_c + sum_c) * per / k,
        },
        "decode_us_per_param": {"wall": dec_w * per, "cpu": dec_c * per},
        "wire_bytes_per_param": wire / n_params,
        "aggregate_bytes_per_param": sum(a.nbytes for a in agg) / n_params,
        "max_abs_diff_vs_plain": err,
        "plain": {
            "encode_us_per_param": penc_w * per / k,
            "sum_us_per_param_per_client": psum_w * per / k,
            "decode_us_per_param": pdec_w * per,
            "wire_bytes_per_param": sum(a.nbytes for a in pp[0]) / n_params,
        },
    }


def round_time_ratio(run_round: Callable[[str], None], *, repeats: int = 3) -> dict[str, Any]:
    """Time one FL round with ``scheme="ckks"`` and ``"none"``, interleaved; return the ratio.

    Args:
        run_round: Runs one full round (train, encode, sum, decode) for the given scheme.
        repeats: Rounds per scheme; medians are compared.

    Returns:
        ``{"plain_s", "ckks_s", "ratio"}`` (issue 4 target: ratio <= 1.3).
    """
    times: dict[str, list[float]] = {"none": [], "ckks": []}
    for _ in range(repeats):
        for scheme in ("none", "ckks"):
            t0 = time.perf_counter()
            run_round(scheme)
            times[scheme].append(time.perf_counter() - t0)
    plain, ckks = statistics.median(times["none"]), statistics.median(times["ckks"])
    return {"plain_s": plain, "ckks_s": ckks, "ratio": ckks / plain}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/ckks.json"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 280])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tenseal as ts

    rng = np.random.default_rng(args.seed)
    weights = [float(n) for n in rng.integers(20, 400, args.clients)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedai-bench-") as tmp:
        for hidden in args.hidden:
            clients, n_params = _model_weights(hidden, args.clients, args.seed)
            for profile, (bits, scale_bits) in PROFILES.items():
                row = _bench_one(
                    clients, n_params, weights, bits, scale_bits, Path(tmp) / f"h{hidden}"
                )
                row.update(
                    model=f"mlp(digits, hidden={hidden})", n_params=n_params, profile=profile
                )
                results.append(row)
                print(
                    f"{row['model']:<28} {profile:<17} {n_params:>7} params  "
                    f"enc {row['encrypt_us_per_param']['wall']:.2f} us/p  "
                    f"sum {row['sum_us_per_param_per_client']['wall']:.3f} us/p/c  "
                    f"chk {row['check_us_per_param_per_client']['wall']:.3f}  "
                    f"dec {row['decode_us_per_param']['wall']:.2f} us/p  "
                    f"wire {row['wire_bytes_per_param']:.1f} B/p  "
                    f"err {row['max_abs_diff_vs_plain']:.1e}",
                    flush=True,
                )
    report = {
        "benchmark": "ckks secure-sum primitives vs plaintext",
        "clients": args.clients,
        "client_weights": weights,
        "tenseal": ts.__version__ if hasattr(ts, "__version__") else "unknown",
        "tenseal_threads": 1,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
        },
        "targets": TARGETS,
        "results": results,
        "round_time_ratio": None,
        "round_time_ratio_note": "needs the Flower round loop; see round_time_ratio()",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
