"""Side-by-side CKKS vs plaintext secure-sum primitives, on real fedai models, JSON out.

Usage::

    .venv/bin/python experiments/bench/ckks.py --out experiments/bench/ckks.json

For each model size (the digits MLP at hidden=128, ~26k parameters, and hidden=280,
~100k) and each CKKS profile in :data:`PROFILES` (default N=8192 [60,50,60] at 2^40 with
symmetric encryption; the same with public-key encryption; compact [60,40] at 2^36) it
times, with ``K`` clients and TenSEAL at 1 thread:

* client ``encode`` (flatten, scale by n_i, encrypt, serialize, tag) per parameter;
* coordinator ``check`` (authenticate) and ``sum`` (load + add + serialize) per parameter
  per client;
* client ``decode`` (load, decrypt, divide, bounds-check, round) per parameter;
* bytes on the wire per parameter (one contribution, and the aggregate);
* the same operations with ``PlainCodec`` / ``PlainSum`` on the same weights;
* the max |CKKS - plain| with both on the same ``round_decimals`` grid (0.0: decoding is exact).

Wall and CPU (process) time are both reported: the machine is shared, and CPU time is
less sensitive to other tenants. Targets (issue 4): encrypt <= 3 us/param, sum <= 0.5
us/param/client, wire <= 85 B/param.

:func:`round_time_ratio` then runs whole federations (``fedai simulate``'s in-process
backend, the quickstart config) with ``scheme = "none"`` and ``"ckks"`` alternately and
reports the CKKS / plaintext ratio of the mean seconds per round, round 1 excluded
(target <= 1.3), for the variants in :data:`RATIO_VARIANTS`.
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
# name -> (coeff_mod_bit_sizes, log2 scale, encryption). "compact": one 60-bit data prime at
# scale 2^36 leaves N * update_bound <= 2^22; symmetric encryption's error (~1e-8 per
# fresh ciphertext at 2^36) keeps the decoded sum exact.
PROFILES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "default": ((60, 50, 60), 40, "symmetric"),
    "default, public-key": ((60, 50, 60), 40, "public-key"),
    "compact": ((60, 40), 36, "symmetric"),
}


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
    encryption: str,
    key_root: Path,
) -> dict[str, Any]:
    shapes = [w.shape for w in clients[0]]
    k = len(clients)
    key_dir = key_root / f"{'-'.join(map(str, bits))}-{scale_bits}-{encryption}"
    _, t_keygen, _ = _timed(
        lambda: create_keys(
            key_dir,
            coeff_mod_bit_sizes=bits,
            global_scale=2.0**scale_bits,
            encryption=encryption,  # type: ignore[arg-type]
        )
    )
    codec = CkksCodec(load_client_bundle(key_dir))
    summer = CkksSum(load_coordinator_bundle(key_dir))
    assert not summer.is_private()

    enc_w, enc_c, payloads = [], [], []
    for w, n in zip(clients, weights, strict=True):
        p, tw, tc = _timed(functools.partial(codec.encode, w, n))
        payloads.append(p)
        enc_w.append(tw)
        enc_c.append(tc)

    def check_all() -> None:
        for p in payloads:
            summer.check(p)

    _, chk_w, chk_c = _timed(check_all)
    agg, sum_w, sum_c = _timed(lambda: summer.sum(payloads))
    total = float(sum(weights))
    dec, dec_w, dec_c = _timed(lambda: codec.decode(agg, total, shapes))

    plain = PlainCodec(round_decimals=codec.round_decimals)  # the same grid as CKKS
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
        "encryption": encryption,
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


def _scheme_config(cfg: Any, scheme: str, key_dir: Path | None) -> Any:
    section = replace(cfg.secure_aggregation, scheme=scheme, key_dir=str(key_dir or ""))
    return cfg.replace(secure_aggregation=section)


def round_time_ratio(cfg: Any, *, key_dir: Path, repeats: int = 3) -> dict[str, Any]:
    """End-to-end FL round time with CKKS divided by the plaintext round time.

    Runs the whole experiment ``cfg`` through :func:`fedai.commands.simulate.simulate` on
    the in-process backend, once with ``scheme = "none"`` and once with ``"ckks"`` (keys in
    ``key_dir``), alternating, ``repeats`` times each, in this process. A round is the
    coordinator's ``RoundRecord.seconds``: sample, train (clients decode the model, train,
    encode; the coordinator checks and sums) and federated evaluation (every client decodes
    the candidate aggregate and evaluates). The per-run figure is the **mean seconds per
    round over rounds 2..R** (round 1 is excluded: it includes one-off data loading and key
    loading, and no client decodes a model in it; one untimed 1-round run per scheme warms the
    caches first); the ratio compares the medians over
    repeats. Total wall and CPU seconds per round (all rounds) are reported alongside.

    Args:
        cfg: The experiment (an ``ExperimentConfig``); its scheme is overridden.
        key_dir: A CKKS key directory (``fedai keys create``).
        repeats: Runs per scheme.

    Returns:
        ``{"plain_s", "ckks_s", "ratio", ...}`` (issue 4 target: ratio <= 1.3).
    """
    from fedai.commands.simulate import simulate

    per_round: dict[str, list[float]] = {"none": [], "ckks": []}
    total_wall: dict[str, list[float]] = {"none": [], "ckks": []}
    total_cpu: dict[str, list[float]] = {"none": [], "ckks": []}
    accuracy: dict[str, float | None] = {}
    rounds = cfg.experiment.rounds
    for scheme in ("none", "ckks"):  # warm-up: imports, data and key caches, untimed
        warm = _scheme_config(cfg, scheme, key_dir if scheme == "ckks" else None)
        simulate(warm.replace(experiment=replace(warm.experiment, rounds=1)), verbose=False)
    for _ in range(repeats):
        for scheme in ("none", "ckks"):
            scfg = _scheme_config(cfg, scheme, key_dir if scheme == "ckks" else None)
            outcome, wall, cpu = _timed(functools.partial(simulate, scfg, verbose=False))
            records = outcome.summary.rounds
            if len(records) != rounds or any(r.status != "ok" for r in records):
                raise RuntimeError(f"{scheme} run did not complete {rounds} ok rounds")
            per_round[scheme].append(statistics.fmean(r.seconds for r in records[1:]))
            total_wall[scheme].append(wall / rounds)
            total_cpu[scheme].append(cpu / rounds)
            accuracy[scheme] = outcome.summary.final["accuracy"]
    med = {
        k: {n: statistics.median(v[n]) for n in v}
        for k, v in {"round": per_round, "wall": total_wall, "cpu": total_cpu}.items()
    }
    return {
        "metric": "mean wall seconds per round over rounds 2..R, median of repeats",
        "rounds": rounds,
        "repeats": repeats,
        "plain_s": med["round"]["none"],
        "ckks_s": med["round"]["ckks"],
        "ratio": med["round"]["ckks"] / med["round"]["none"],
        "all_rounds_wall_ratio": med["wall"]["ckks"] / med["wall"]["none"],
        "all_rounds_cpu_ratio": med["cpu"]["ckks"] / med["cpu"]["none"],
        "plain_runs_s_per_round": per_round["none"],
        "ckks_runs_s_per_round": per_round["ckks"],
        "final_accuracy": accuracy,
    }


RATIO_VARIANTS: dict[str, tuple[str, list[str]]] = {
    # name -> (CKKS profile, config overrides on experiments/quickstart.toml)
    "quickstart (mlp)": ("default", []),
    "quickstart (mlp), compact keys": ("compact", []),
    "quickstart (mlp), public-key keys": ("default, public-key", []),
    "quickstart, mlp hidden=32": ("default", ["model.hidden=32"]),
    "quickstart with the cnn": ("default", ['model.name="cnn"']),
}


def _n_params(cfg: Any) -> int:
    from fedai.data import load_client
    from fedai.models import ModelSpec, build_model

    data = load_client(cfg, 0)
    spec = ModelSpec(
        name=cfg.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden=cfg.model.hidden,
    )
    return sum(p.numel() for p in build_model(spec).parameters())


def _ratio_rows(key_root: Path, rounds: int, repeats: int) -> list[dict[str, Any]]:
    from fedai.config import ExperimentConfig

    toml = Path(__file__).resolve().parents[1] / "quickstart.toml"
    rows = []
    for name, (profile, overrides) in RATIO_VARIANTS.items():
        bits, scale_bits, encryption = PROFILES[profile]
        key_dir = key_root / f"ratio-{profile.replace(', ', '-')}"
        if not key_dir.exists():
            create_keys(
                key_dir,
                coeff_mod_bit_sizes=bits,
                global_scale=2.0**scale_bits,
                encryption=encryption,  # type: ignore[arg-type]
            )
        cfg = ExperimentConfig.from_toml(toml, [f"experiment.rounds={rounds}", *overrides])
        row = round_time_ratio(cfg, key_dir=key_dir, repeats=repeats)
        row.update(
            variant=name,
            profile=profile,
            overrides=overrides,
            n_params=_n_params(cfg),
            clients=cfg.experiment.num_clients,
            model=cfg.model.name
            + (f"(hidden={cfg.model.hidden})" if cfg.model.name == "mlp" else ""),
        )
        rows.append(row)
        print(
            f"round time {name:<36} plain {row['plain_s']:.3f} s  ckks {row['ckks_s']:.3f} s  "
            f"ratio {row['ratio']:.2f}x (all rounds wall {row['all_rounds_wall_ratio']:.2f}x, "
            f"cpu {row['all_rounds_cpu_ratio']:.2f}x)",
            flush=True,
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/results/ckks.json"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 280])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per ratio run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scheme and variant")
    args = parser.parse_args(argv)

    import tenseal as ts

    rng = np.random.default_rng(args.seed)
    weights = [float(n) for n in rng.integers(20, 400, args.clients)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedai-bench-") as tmp:
        for hidden in args.hidden:
            clients, n_params = _model_weights(hidden, args.clients, args.seed)
            for profile, (bits, scale_bits, encryption) in PROFILES.items():
                row = _bench_one(
                    clients,
                    n_params,
                    weights,
                    bits,
                    scale_bits,
                    encryption,
                    Path(tmp) / f"h{hidden}",
                )
                row.update(
                    model=f"mlp(digits, hidden={hidden})", n_params=n_params, profile=profile
                )
                results.append(row)
                print(
                    f"{row['model']:<28} {profile:<20} {n_params:>7} params  "
                    f"enc {row['encrypt_us_per_param']['wall']:.2f} us/p  "
                    f"sum {row['sum_us_per_param_per_client']['wall']:.3f} us/p/c  "
                    f"chk {row['check_us_per_param_per_client']['wall']:.3f}  "
                    f"dec {row['decode_us_per_param']['wall']:.2f} us/p  "
                    f"wire {row['wire_bytes_per_param']:.1f} B/p  "
                    f"err {row['max_abs_diff_vs_plain']:.1e}",
                    flush=True,
                )
        ratios = _ratio_rows(Path(tmp), args.rounds, args.repeats)
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
        "round_time_ratio": ratios[0]["ratio"],
        "round_time_ratio_note": (
            "CKKS / plaintext mean wall seconds per FL round over rounds 2..R (round 1 "
            "excluded), quickstart config (10 clients, digits MLP), in-process backend, "
            "median of repeats; see round_time_ratios for variants"
        ),
        "round_time_ratio_target": 1.3,
        "round_time_ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
