"""Federated data: sources, partitioners, and each client's train/test split.

:func:`load_federated` turns a :class:`~fedai.config.DataSection` into one
:class:`ClientData` per client, deterministically for a seed. :func:`load_client` is the
cached per-client view the ClientApp uses; :func:`load_local_file` is what a real
on-prem node uses (its own file, never partitioned).

Both paths split each client's samples in :func:`split_train_test`, which is also where
features are standardised (``data.standardize``, :mod:`fedai.data.scaling`): statistics
from that client's training split only, applied to both of its splits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedai.config import DataSection, ExperimentConfig, ExperimentSection
from fedai.data import files, hub, partition, scaling, sources
from fedai.errors import DataError, PartitionError


@dataclass(frozen=True, slots=True)
class ClientData:
    """One client's local data: train and test splits."""

    client_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def split_train_test(
    client_id: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float,
    seed: int,
    num_classes: int,
    standardize: bool = False,
) -> ClientData:
    """Shuffle and split one client's samples; both splits get at least one sample.

    Args:
        client_id: The client's name (for messages).
        x: The client's features. Not modified.
        y: The client's labels.
        test_fraction: Share of samples held out for testing.
        seed: Seeds the shuffle.
        num_classes: Class count recorded in the result.
        standardize: Z-score both splits with the training split's per-feature mean and
            standard deviation (:func:`fedai.data.scaling.fit`).

    Raises:
        PartitionError: if the client holds fewer than two samples.
    """
    n = len(y)
    if n < 2:
        raise PartitionError(
            f"client {client_id} needs at least 2 samples for a train and a test split; got {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    te, tr = order[:n_test], order[n_test:]
    x_train, x_test = x[tr], x[te]
    if standardize:
        scaler = scaling.fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    return ClientData(client_id, x_train, y[tr], x_test, y[te], num_classes)


def _pool(data: DataSection) -> sources.Pool:
    kind, _, arg = data.dataset.partition(":")
    if data.dataset == "digits":
        return sources.load_digits()
    if data.dataset == "breast_cancer":
        return sources.load_breast_cancer()
    if kind == "csv":
        x, y = files.load_csv(arg, label_column=data.label_column)
    elif kind == "npz":
        x, y = files.load_npz(arg)
    elif kind == "hub":
        x, y, k = hub.load_hub(arg)
        return sources.Pool(arg, x, y, k)
    else:
        raise DataError(f"data.dataset {data.dataset!r} is not a known source")
    return sources.Pool(data.dataset, x, y, int(y.max()) + 1 if len(y) else 0)


def load_federated(cfg: ExperimentConfig) -> list[ClientData]:
    """Return every client's data for ``cfg`` (deterministic for ``cfg.experiment.seed``).

    Raises:
        DataError: unreadable source. PartitionError: a client would get too few samples.
    """
    data, exp = cfg.data, cfg.experiment
    seed = exp.seed
    file_source = data.dataset.partition(":")[0] in ("csv", "npz")
    standardize = scaling.resolve(data.standardize, file_source=file_source)
    if data.dataset == "synthetic":
        xs, ys = sources.synthetic(
            num_clients=exp.num_clients,
            alpha=data.synthetic_alpha,
            beta=data.synthetic_beta,
            dim=data.synthetic_dim,
            num_classes=data.synthetic_classes,
            seed=seed,
        )
        return [
            split_train_test(
                str(i),
                x,
                y,
                test_fraction=data.test_fraction,
                seed=seed + 7919 * (i + 1),
                num_classes=data.synthetic_classes,
                standardize=standardize,
            )
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
    pool = _pool(data)
    if pool.num_classes < 2:
        raise DataError(
            f"data set {pool.name!r} must have at least 2 classes; got {pool.num_classes}"
        )
    parts = partition.partition(
        pool.y,
        exp.num_clients,
        method=data.partition,
        alpha=data.alpha,
        shards_per_client=data.shards_per_client,
        seed=seed,
        min_samples=data.min_samples,
    )
    return [
        split_train_test(
            str(i),
            pool.x[idx],
            pool.y[idx],
            test_fraction=data.test_fraction,
            seed=seed + 7919 * (i + 1),
            num_classes=pool.num_classes,
            standardize=standardize,
        )
        for i, idx in enumerate(parts)
    ]


@functools.lru_cache(maxsize=4)
def _federated_cached(data: DataSection, seed: int, num_clients: int) -> tuple[ClientData, ...]:
    experiment = ExperimentSection(seed=seed, num_clients=num_clients, clients_per_round=1)
    return tuple(load_federated(ExperimentConfig(data=data, experiment=experiment)))


def load_client(cfg: ExperimentConfig, partition_id: int) -> ClientData:
    """Return client ``partition_id``'s data (the federation is built once per process)."""
    if not 0 <= partition_id < cfg.experiment.num_clients:
        raise PartitionError(
            f"partition id must be in [0, {cfg.experiment.num_clients}); got {partition_id}"
        )
    # Keyed by what the partition depends on only (the sections are frozen and hashable).
    return _federated_cached(cfg.data, cfg.experiment.seed, cfg.experiment.num_clients)[
        partition_id
    ]


def load_local_file(
    path: str, *, client_id: str, data: DataSection, seed: int, num_classes: int | None = None
) -> ClientData:
    """Load a real node's own file (``.csv`` or ``.npz``), split it, never partition it.

    A node's file is a file source: ``data.standardize = "auto"`` standardises it from
    the node's own training split, as in simulation.
    """
    x, y = (
        files.load_npz(path)
        if path.endswith(".npz")
        else files.load_csv(path, label_column=data.label_column)
    )
    k = num_classes if num_classes is not None else int(y.max()) + 1
    if y.max() >= k:
        raise DataError(f"{path}: labels must be < {k}; got {int(y.max())}")
    return split_train_test(
        client_id,
        x,
        y,
        test_fraction=data.test_fraction,
        seed=seed,
        num_classes=max(k, 2),
        standardize=scaling.resolve(data.standardize, file_source=True),
    )


__all__ = ["ClientData", "load_client", "load_federated", "load_local_file", "split_train_test"]
