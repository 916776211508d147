"""Benchmark: one DP-SGD local epoch vs one non-private epoch, same model and data.

Digits (1,437 training examples, 8x8), fedai's MLP, SGD lr 0.05 momentum 0.9, batch 64,
sigma 1.0, C 1.0. Non-private: shuffled mini-batches (fedai.training.train_epochs).
DP-SGD: fedai.privacy.train_dp_sgd (new PrivacyEngine per call, Poisson sampling) in
Opacus' "hooks", "ew" and "ghost" modes and fedai's "fused" mode (fedai.privacy.fused:
clipped gradients from one backward pass, Opacus' loader, noise and accountant). Each
setting runs once to warm up, then ``--repeats`` times, interleaved so that machine load
hits all settings alike; we report the median seconds per epoch, both for a 1-epoch call
(what one FL round with one local epoch costs, including Opacus set-up) and amortised over
a 5-epoch call. One thread.

    .venv/bin/python experiments/bench/dpsgd.py --out experiments/bench/dpsgd.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from fedai.models import ModelSpec, build_model
    from fedai.privacy import train_dp_sgd
    from fedai.training import train_epochs

    x, y = load_digits(return_X_y=True)
    x_tr, _, y_tr, _ = train_test_split(
        (x / 16.0).astype(np.float32), y, test_size=0.2, random_state=0, stratify=y
    )
    data = TensorDataset(torch.as_tensor(x_tr), torch.as_tensor(y_tr, dtype=torch.int64))
    spec = ModelSpec(name="mlp", input_shape=(64,), num_classes=10, hidden=args.hidden)
    batch, lr, momentum = 64, 0.05, 0.9

    def opt(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum)

    def plain(epochs: int, seed: int) -> float:
        model = build_model(spec, seed=seed)
        loader = DataLoader(
            data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        t = time.perf_counter()
        train_epochs(model, loader, opt(model.parameters()), epochs=epochs)
        return time.perf_counter() - t

    def private(mode: str) -> Any:
        def run(epochs: int, seed: int) -> float:
            model = build_model(spec, seed=seed)
            loader = DataLoader(
                data, batch_size=batch, generator=torch.Generator().manual_seed(seed)
            )
            t = time.perf_counter()
            train_dp_sgd(
                model,
                loader=loader,
                optimizer_factory=opt,
                epochs=epochs,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                grad_sample_mode=mode,
                noise_generator=torch.Generator().manual_seed(seed + 1),
            )
            return time.perf_counter() - t

        return run

    settings = {
        "non_private": plain,
        "dp_hooks": private("hooks"),
        "dp_ew": private("ew"),
        "dp_ghost": private("ghost"),
        "dp_fused": private("fused"),
    }
    results: dict[str, dict[str, Any]] = {}
    for epochs in (1, 5):
        times: dict[str, list[float]] = {k: [] for k in settings}
        for fn in settings.values():
            fn(epochs, 999)  # warm-up
        for rep in range(args.repeats):
            for name, fn in settings.items():
                times[name].append(fn(epochs, rep) / epochs)
        key = f"{epochs}_epoch_call"
        results[key] = {
            name: {"median_s_per_epoch": statistics.median(v), "min_s_per_epoch": min(v), "all": v}
            for name, v in times.items()
        }
        base = results[key]["non_private"]["median_s_per_epoch"]
        base_min = results[key]["non_private"]["min_s_per_epoch"]
        for name in ("dp_hooks", "dp_ew", "dp_ghost", "dp_fused"):
            r = results[key][name]
            r["slowdown_median"] = r["median_s_per_epoch"] / base
            r["slowdown_best_of"] = r["min_s_per_epoch"] / base_min
    report = {
        "benchmark": "dpsgd_epoch_vs_non_private",
        "data": {"dataset": "digits", "train_examples": len(data), "batch_size": batch},
        "model": spec.to_dict(),
        "params": sum(p.numel() for p in build_model(spec).parameters()),
        "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "poisson_sampling": True},
        "repeats": args.repeats,
        "threads": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": results,
        "goal": "DP epoch <= 2x non-private epoch",
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    for key, res in results.items():
        print(
            key,
            {n: round(r["median_s_per_epoch"], 4) for n, r in res.items()},
            {n: round(r["slowdown_median"], 2) for n, r in res.items() if n != "non_private"},
        )


if __name__ == "__main__":
    main()
