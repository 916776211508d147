"""Encrypted vs plaintext linear inference, side by side: in process and over gRPC loopback.

Digits (64 -> 10 logistic regression) and breast cancer (30 -> 1: the margin
``logit_1 - logit_0`` of a 2-class logistic regression). For each: single-query latency
(median of repeats; encrypt + evaluate + decrypt, key generated once beforehand) and
batched per-query amortised cost on the test split and on a 4096-row batch.

    .venv/bin/python experiments/bench/inference.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tenseal as ts
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fedai.inference import LinearLayer, ModelHolder, Querier, choose_layout, encrypted_predict
from fedai.inference.client import InferenceClient
from fedai.inference.service import ServiceLimits, TokenStore, create_server
from fedai.models import ModelSpec, build_model

TOKEN = "bench-token-0123456789abcdef"  # noqa: S105


def _train_logreg(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 300) -> LinearLayer:
    spec = ModelSpec(name="logreg", input_shape=(x.shape[1],), num_classes=classes)
    model = build_model(spec, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    w = model.linear.weight.detach().double().numpy()
    b = model.linear.bias.detach().double().numpy()
    if classes == 2:  # one score: the margin, sign = class
        return LinearLayer(weight=(w[1] - w[0])[None, :], bias=np.array([b[1] - b[0]]))
    return LinearLayer(weight=w, bias=b)


def _dataset(name: str) -> tuple[LinearLayer, np.ndarray]:
    loader = load_digits if name == "digits" else load_breast_cancer
    x, y = loader(return_X_y=True)
    x_tr, x_te, y_tr, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    layer = _train_logreg(scaler.transform(x_tr), y_tr, int(y.max()) + 1)
    return layer, scaler.transform(x_te)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _once_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def _bench(name: str, repeats: int) -> dict[str, Any]:
    layer, x_test = _dataset(name)
    holder = ModelHolder([layer])
    querier = Querier()
    big = np.resize(x_test, (4096, x_test.shape[1]))
    one = x_test[:1]
    plain = holder.predict_plain

    def local(x: np.ndarray) -> np.ndarray:
        return encrypted_predict(querier, holder.evaluate, holder.infos, x)

    server, port = create_server(
        holder, port=0, tokens=TokenStore({"bench": TOKEN}), limits=ServiceLimits()
    )
    try:
        with InferenceClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            info = client.info()

            def remote(x: np.ndarray) -> np.ndarray:
                return client.predict(x, querier=querier, info=info)

            result: dict[str, Any] = {
                "model": f"logreg {layer.info.in_features}->{layer.info.out_features}",
                "test_rows": int(x_test.shape[0]),
                "single_query_ms": {
                    "plaintext": _median_ms(lambda: plain(one), repeats * 10),
                    "encrypted_in_process": _median_ms(lambda: local(one), repeats),
                    "encrypted_grpc": _median_ms(lambda: remote(one), repeats),
                },
            }
            batched: dict[str, Any] = {}
            for label, x in (("test_split", x_test), ("rows_4096", big)):
                t_plain, ref = _once_ms(lambda x=x: plain(x))
                t_local, out_local = _once_ms(lambda x=x: local(x))
                t_remote, out_remote = _once_ms(lambda x=x: remote(x))
                n = x.shape[0]
                batched[label] = {
                    "rows": int(n),
                    "plaintext_ms_per_query": t_plain / n,
                    "encrypted_in_process_ms_per_query": t_local / n,
                    "encrypted_grpc_ms_per_query": t_remote / n,
                    "max_abs_error": float(
                        max(np.abs(out_local - ref).max(), np.abs(out_remote - ref).max())
                    ),
                    "prediction_agreement": float(
                        min(_agree(out_local, ref), _agree(out_remote, ref))
                    ),
                }
            result["batched"] = batched
    finally:
        server.stop(grace=None)
    single = querier.encrypt(one, layout=_layout_for(holder, querier))
    result["bytes"] = {
        "public_context": len(querier.public_context()),
        "single_query_upload": sum(len(c) for c in single.ciphertexts),
        "single_query_reply": sum(
            len(c) for c in holder.evaluate(0, querier.public_context(), single).ciphertexts
        ),
    }
    return result


def _layout_for(holder: ModelHolder, querier: Querier) -> Any:
    info = holder.infos[0]
    return choose_layout(1, info.in_features, info.out_features, querier.profile)


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape[1] == 1:
        return float(np.mean((a[:, 0] > 0) == (b[:, 0] > 0)))
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write JSON here (default: print)")
    parser.add_argument("--repeats", type=int, default=10, help="single-query repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        "environment": {
            "python": platform.python_version(),
            "tenseal": ts.__version__,
            "torch_threads": torch.get_num_threads(),
            "ckks": {
                "poly_modulus_degree": 8192,
                "coeff_mod_bit_sizes": [60, 40, 40, 60],
                "scale": "2^40",
                "n_threads": 1,
                "galois_keys": False,
            },
        },
        "digits": _bench("digits", args.repeats),
        "breast_cancer": _bench("breast_cancer", args.repeats),
    }
    text = json.dumps(results, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
