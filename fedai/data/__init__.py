"""Federated data: sources, partitioners, and each client's train/test split.

:func:`load_federated` turns a :class:`~fedai.config.DataSection` into one
:class:`ClientData` per client, deterministically for a seed. :func:`load_client` is the
cached per-client view the ClientApp uses; :func:`load_local_file` is what a real
on-prem node uses (its own file, never partitioned).

Both paths split each client's samples in :func:`split_train_test`. Features are
standardised (``data.standardize``, :mod:`fedai.data.scaling`) with statistics from
training splits only, applied to both splits: the client's own (``local``), or the
federation's pooled ones (``federated``, decoded by the ClientApp before round 1). The
raw split is cached once per process and each standardised view is cached by the
statistics' digest (:func:`standardized_view`), so a view is computed once per client and
statistics, however many rounds use it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from fedai.config import DataSection, ExperimentConfig, ExperimentSection
from fedai.data import files, hub, partition, scaling, sources
from fedai.data.reading import NodeReading, keyed_permutation, split_key
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
    order: np.ndarray | None = None,
    n_test: int | None = None,
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
        order: The permutation to split by (a real node's keyed one,
            :func:`fedai.data.reading.keyed_permutation`); default: one from ``seed``.
        n_test: The test split's size; default ``round(n * test_fraction)``, clamped.

    Raises:
        PartitionError: if the client holds fewer than two samples.
    """
    n = len(y)
    if n < 2:
        raise PartitionError(
            f"client {client_id} needs at least 2 samples for a train and a test split; got {n}"
        )
    if order is None:
        order = np.random.default_rng(seed).permutation(n)
    elif order.shape != (n,):
        raise PartitionError(f"split order must have shape ({n},); got {order.shape}")
    if n_test is None:
        n_test = round(n * test_fraction)
    n_test = min(max(1, n_test), n - 1)
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


def _scaled(raw: ClientData, scaler: scaling.Standardizer) -> ClientData:
    """``raw`` with both splits standardised by ``scaler`` (labels and ids unchanged)."""
    return ClientData(
        raw.client_id,
        scaler.transform(raw.x_train),
        raw.y_train,
        scaler.transform(raw.x_test),
        raw.y_test,
        raw.num_classes,
    )


def standardizes(data: DataSection, *, own_file: bool = False) -> bool:
    """Whether ``data.standardize`` applies to this source (``own_file``: a node's file)."""
    file_source = own_file or data.dataset.partition(":")[0] in ("csv", "npz")
    return scaling.resolve(data.standardize, file_source=file_source)


def load_federated(cfg: ExperimentConfig, *, standardize: bool | None = None) -> list[ClientData]:
    """Return every client's data for ``cfg`` (deterministic for ``cfg.experiment.seed``).

    Args:
        cfg: The experiment config.
        standardize: ``None`` (default): as ``data.standardize`` and ``data.statistics``
            say: with federated statistics, every client with the statistics of all
            training splits pooled, clipped to ``data.feature_bounds`` (what the
            federation's statistics stage computes, up to its encoding precision);
            with local ones, each client with its own training split's; ``False``: the raw splits.

    Raises:
        DataError: unreadable source. PartitionError: a client would get too few samples.
    """
    if standardize is None and standardizes(cfg.data):
        bounds = scaling.FeatureBounds.from_config(cfg.data)
        mode = scaling.statistics_mode(
            cfg.data.statistics, privacy_mode=cfg.privacy.mode, bounded=bounds is not None
        )
        if mode == "federated":
            raw = load_federated(cfg, standardize=False)
            scaler = scaling.fit(np.concatenate([c.x_train for c in raw]), bounds=bounds)
            return [_scaled(c, scaler) for c in raw]
    data, exp = cfg.data, cfg.experiment
    seed = exp.seed
    if standardize is None:
        standardize = standardizes(data)
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
    cfg = ExperimentConfig(data=data, experiment=experiment)
    return tuple(load_federated(cfg, standardize=False))


#: Standardised views by (source key, statistics digest or "local"), least recent first.
_VIEWS: OrderedDict[tuple[Hashable, ...], ClientData] = OrderedDict()
_MAX_VIEWS = 4096


def standardized_view(
    raw: ClientData,
    *,
    key: tuple[Hashable, ...],
    statistics: Callable[[], scaling.Standardizer] | None = None,
    digest: str = "",
) -> ClientData:
    """``raw`` standardised, cached by ``key`` and the statistics' ``digest``.

    Args:
        raw: An unstandardised client split.
        key: Names ``raw`` (what it was loaded from) in the cache.
        statistics: Makes the federated statistics named by ``digest`` (decodes and
            validates them); called only when the view is not cached. None: ``raw``'s
            own training split's (:func:`fedai.data.scaling.fit`).
        digest: Names ``statistics`` (e.g. :func:`fedai.data.scaling.digest` of the
            aggregate they were decoded from).
    """
    k = (*key, digest if statistics is not None else "local")
    hit = _VIEWS.get(k)
    if hit is not None:
        _VIEWS.move_to_end(k)
        return hit
    out = _scaled(raw, statistics() if statistics is not None else scaling.fit(raw.x_train))
    _VIEWS[k] = out
    while len(_VIEWS) > _MAX_VIEWS:
        _VIEWS.popitem(last=False)
    return out


def raw_client(cfg: ExperimentConfig, partition_id: int) -> ClientData:
    """Client ``partition_id``'s unstandardised split (the federation is built once)."""
    if not 0 <= partition_id < cfg.experiment.num_clients:
        raise PartitionError(
            f"partition id must be in [0, {cfg.experiment.num_clients}); got {partition_id}"
        )
    # Keyed by what the partition depends on only (the sections are frozen and hashable).
    return _federated_cached(cfg.data, cfg.experiment.seed, cfg.experiment.num_clients)[
        partition_id
    ]


def load_client(cfg: ExperimentConfig, partition_id: int) -> ClientData:
    """Client ``partition_id``'s data, standardised as ``data.standardize`` says.

    With its own training split's statistics (the ClientApp applies federated ones itself).
    """
    raw = raw_client(cfg, partition_id)
    if not standardizes(cfg.data):
        return raw
    key = ("partition", cfg.data, cfg.experiment.seed, cfg.experiment.num_clients, partition_id)
    return standardized_view(raw, key=key)


def load_local_file(
    path: str,
    *,
    client_id: str,
    reading: NodeReading | None = None,
    state_dir: str | None = None,
    standardize: bool | None = None,
) -> ClientData:
    """Load a real node's own file (``.csv`` or ``.npz``), split it, never partition it.

    How the file is read and split is the node's own (:class:`~fedai.data.reading.
    NodeReading`, from its ``node_config``): label column, class count, test fraction and
    minimum, standardisation, and a split keyed by a secret the coordinator never sees
    (:func:`~fedai.data.reading.split_key`; ``state_dir`` is where the node keeps it).
    ``standardize=False`` returns the raw split (the ClientApp then applies local or
    federated statistics through :func:`standardized_view`).

    Raises:
        DataError: the file is unreadable or malformed, a label is outside the announced
            classes, or it is too small for the node's minimum test split.
    """
    reading = NodeReading() if reading is None else reading
    x, y = (
        files.load_npz(path)
        if path.endswith(".npz")
        else files.load_csv(path, label_column=reading.label_column)
    )
    k = reading.num_classes if reading.num_classes is not None else int(y.max()) + 1
    if y.max() >= k:
        raise DataError(f"{path}: labels must be < {k} (num-classes); got {int(y.max())}")
    n_test = reading.test_size(len(y), what=path)
    key = split_key(split_seed=reading.split_seed, state_dir=state_dir, data_path=path)
    if standardize is None:
        standardize = scaling.resolve(reading.standardize, file_source=True)
    return split_train_test(
        client_id,
        x,
        y,
        test_fraction=reading.test_fraction,
        seed=0,
        num_classes=max(k, 2),
        standardize=standardize,
        order=keyed_permutation(len(y), key),
        n_test=n_test,
    )


__all__ = [
    "ClientData",
    "NodeReading",
    "load_client",
    "load_federated",
    "load_local_file",
    "raw_client",
    "split_train_test",
    "standardized_view",
    "standardizes",
]
