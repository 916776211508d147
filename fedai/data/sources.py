"""Data sources: embedded scikit-learn sets and the FedProx Synthetic(alpha, beta) benchmark.

All sources return float32 features and int64 labels. ``digits`` is shaped (1, 8, 8)
and scaled to [0, 1] so that both flat models and the CNN can use it; ``breast_cancer``
is standardised (zero mean, unit variance per feature, statistics of the whole set —
acceptable for an embedded simulation set, documented as such).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, slots=True)
class Pool:
    """A pooled data set before partitioning."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(int(d) for d in self.x.shape[1:])


def _sklearn_data_file(name: str) -> Path | None:
    """Path of a data file scikit-learn ships, found without importing scikit-learn.

    Importing scikit-learn costs ~0.75 s here, about a third of a quickstart's start-up;
    reading its bundled CSV directly costs milliseconds. ``None`` if the layout differs
    (then the callers use scikit-learn's loaders; a test checks both agree).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _sklearn_data_file("digits.csv.gz")
    if path is not None:
        raw = np.loadtxt(path, delimiter=",")
        if raw.shape == (1797, 65):
            return raw[:, :-1], raw[:, -1]
    from sklearn.datasets import load_digits as _load

    data = _load()
    return data.data, data.target


def _breast_cancer_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _sklearn_data_file("breast_cancer.csv")
    if path is not None:
        raw = np.loadtxt(path, delimiter=",", skiprows=1)
        if raw.shape == (569, 31):
            return raw[:, :-1], raw[:, -1]
    from sklearn.datasets import load_breast_cancer as _load

    data = _load()
    return data.data, data.target


def load_digits() -> Pool:
    """scikit-learn's 8x8 digits (1797 samples, 10 classes), shape (1, 8, 8), in [0, 1]."""
    features, target = _digits_arrays()
    x = (features.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return Pool("digits", x, target.astype(np.int64), 10)


def load_breast_cancer() -> Pool:
    """scikit-learn's breast cancer set (569 samples, 30 features, 2 classes), standardised."""
    features, target = _breast_cancer_arrays()
    x = features.astype(np.float64)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    return Pool("breast_cancer", x, target.astype(np.int64), 2)


def synthetic(
    *,
    num_clients: int,
    alpha: float,
    beta: float,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    max_samples: int = 2000,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FedProx Synthetic(alpha, beta) with its natural per-client split.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Sec. 5.1:
    for client k, ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)``; model ``W_k, b_k ~ N(u_k, 1)``;
    features ``x ~ N(v_k, Sigma)`` with ``v_k ~ N(B_k, 1)`` and ``Sigma_jj = j^-1.2``;
    label ``argmax softmax(W_k x + b_k)``. Sizes follow the paper's code,
    ``lognormal(4, 2) + 50``, capped at ``max_samples`` to keep simulations small.

    Returns:
        Per-client feature arrays (n_k, dim) and label arrays (n_k,).
    """
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4, 2, num_clients).astype(int) + 50, max_samples)
    cov_diag = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    xs, ys = [], []
    for k in range(num_clients):
        u_k = rng.normal(0.0, np.sqrt(alpha)) if alpha > 0 else 0.0
        b_k = rng.normal(0.0, np.sqrt(beta)) if beta > 0 else 0.0
        w = rng.normal(u_k, 1.0, (dim, num_classes))
        b = rng.normal(u_k, 1.0, num_classes)
        v = rng.normal(b_k, 1.0, dim)
        x = v + rng.standard_normal((int(sizes[k]), dim)) * np.sqrt(cov_diag)
        y = np.argmax(x @ w + b, axis=1)
        xs.append(x.astype(np.float32))
        ys.append(y.astype(np.int64))
    return xs, ys


__all__ = ["Pool", "load_breast_cancer", "load_digits", "synthetic"]
