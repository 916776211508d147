"""Cost of validating untrusted ciphertexts in the coordinator's sum (issue 9), JSON out.

Usage::

    .venv/bin/python experiments/bench/validation.py --out experiments/bench/results/validation.json

Times, interleaved in one process on the same contributions (the digits MLP, hidden 128,
26,122 parameters, 10 clients, the default CKKS profile, TenSEAL at 1 thread):

* ``validated``: today's ``CkksSum.check`` on every contribution, then ``CkksSum.sum``
  (every ciphertext goes through ``load_ckks_vector``: wire-structure check, SEAL
  ``is_valid_for``, level, scale);
* ``unvalidated``: the same check and sum as before issue 9 (envelope, then
  ``ts.ckks_vector_from`` and ``add_`` with only a size check), re-implemented here as the
  baseline;
* the validation alone per ciphertext (``check_ckks_bytes`` and ``is_valid_for``).

Reports microseconds per parameter per client (wall and CPU), the ratio validated /
unvalidated, and the target (ratio <= 1.5, i.e. within 1.5x of the 0.28 us baseline).
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

from fedai.crypto import (
    CkksCodec,
    CkksSum,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.crypto.ckks_wire import check_ckks_bytes
from fedai.crypto.envelope import Envelope, PayloadKind, Scheme
from fedai.crypto.packing import chunk_bounds
from fedai.models import ModelSpec, build_model, get_weights


def unvalidated_sum(summer: CkksSum, payloads: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    """The pre-issue-9 check + sum: authenticate, load, size check, add, re-envelope."""
    import tenseal as ts

    bundle = summer._bundle
    # check() opened every payload, then sum() opened them again (as today's code does).
    for _ in range(2):
        opened = [
            Envelope.from_payload(
                p,
                scheme=Scheme.CKKS,
                fingerprint=bundle.fingerprint,
                mac_key=bundle._mac_key,
                slots=bundle.params.slots,
            )
            for p in payloads
        ]
    first = opened[0][0]
    out: list[bytes] = []
    for j, (lo, hi) in enumerate(chunk_bounds(first.n_values, bundle.params.slots)):
        acc = ts.ckks_vector_from(bundle._context, opened[0][1][j].tobytes())
        assert acc.size() == hi - lo
        for i in range(1, len(opened)):
            vec = ts.ckks_vector_from(bundle._context, opened[i][1][j].tobytes())
            assert vec.size() == hi - lo
            acc.add_(vec)
        out.append(acc.serialize())
    agg = Envelope(
        scheme=Scheme.CKKS,
        kind=PayloadKind.AGGREGATE,
        fingerprint=bundle.fingerprint,
        n_values=first.n_values,
        slots=bundle.params.slots,
        n_summands=len(opened),
        specs=first.specs,
    )
    return agg.to_payload(out, mac_key=bundle._mac_key)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("experiments/bench/results/validation.json")
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)

    import tenseal as ts
    import tenseal.sealapi as sealapi

    spec = ModelSpec(name="mlp", input_shape=(1, 8, 8), num_classes=10, hidden=128)
    models = [get_weights(build_model(spec, seed=s)) for s in range(args.clients)]
    n_params = sum(w.size for w in models[0])
    with tempfile.TemporaryDirectory(prefix="fedai-bench-") as tmp:
        create_keys(tmp)
        codec = CkksCodec(load_client_bundle(tmp))
        summer = CkksSum(load_coordinator_bundle(tmp))
        payloads = [codec.encode([w * 0.01 for w in m], 10.0 + i) for i, m in enumerate(models)]

        def validated() -> None:
            for p in payloads:
                summer.check(p)
            summer.sum(payloads)

        def unvalidated() -> None:
            unvalidated_sum(summer, payloads)

        # Same aggregate both ways.
        a, b = summer.sum(payloads), unvalidated_sum(summer, payloads)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

        times: dict[str, list[tuple[float, float]]] = {"validated": [], "unvalidated": []}
        validated()
        unvalidated()  # warm-up
        for _ in range(args.repeats):
            times["validated"].append(_timed(validated))
            times["unvalidated"].append(_timed(unvalidated))

        context = summer._bundle._context
        blob = payloads[0][1].tobytes()
        vec = ts.ckks_vector_from(context, blob)
        seal = context.seal_context().data
        n = 200
        wire_s, _ = _timed(
            lambda: [
                check_ckks_bytes(blob, size=4096, scale=context.global_scale, where="x")
                for _ in range(n)
            ]
        )
        valid_s, _ = _timed(
            lambda: [sealapi.is_valid_for(vec.ciphertext()[0], seal) for _ in range(n)]
        )
        load_s, _ = _timed(lambda: [ts.ckks_vector_from(context, blob) for _ in range(n)])

    per = 1e6 / (n_params * args.clients)
    result: dict[str, Any] = {}
    for name, rows in times.items():
        result[name] = {
            "wall_us_per_param_per_client": statistics.median(w for w, _ in rows) * per,
            "cpu_us_per_param_per_client": statistics.median(c for _, c in rows) * per,
        }
    ratio_wall = (
        result["validated"]["wall_us_per_param_per_client"]
        / result["unvalidated"]["wall_us_per_param_per_client"]
    )
    ratio_cpu = (
        result["validated"]["cpu_us_per_param_per_client"]
        / result["unvalidated"]["cpu_us_per_param_per_client"]
    )
    report = {
        "benchmark": "coordinator check + sum, validated vs unvalidated ciphertext loading",
        "model": "mlp(digits, hidden=128)",
        "n_params": n_params,
        "clients": args.clients,
        "repeats": args.repeats,
        "profile": "default: N=8192, [60,50,60], 2^40, symmetric",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.machine(),
        },
        **result,
        "ratio_wall": ratio_wall,
        "ratio_cpu": ratio_cpu,
        "ratio_target": 1.5,
        "per_ciphertext_us": {
            "wire_check": wire_s / n * 1e6,
            "seal_is_valid_for": valid_s / n * 1e6,
            "tenseal_load": load_s / n * 1e6,
        },
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
