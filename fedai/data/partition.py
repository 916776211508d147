"""Partitioners: IID, Dirichlet(alpha) label skew, and shards. Deterministic per seed.

* IID: a random permutation cut into ``num_clients`` near-equal parts.
* Dirichlet: for each class, proportions ``p ~ Dir(alpha * 1)`` over clients
  (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution").
  Smaller ``alpha`` means stronger label skew.
* Shards: sort by label, cut into ``num_clients * shards_per_client`` shards and deal
  each client ``shards_per_client`` of them (McMahan et al. 2017, FedAvg).

A partition that leaves any client with fewer than ``min_samples`` samples raises
:class:`~fedai.errors.PartitionError` instead of failing later in training.
"""

from __future__ import annotations

import numpy as np

from fedai.errors import PartitionError


def iid(n: int, num_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Return ``num_clients`` disjoint index arrays covering ``range(n)``."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(
    labels: np.ndarray, num_clients: int, *, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Return label-skewed index arrays drawn with per-class Dirichlet(alpha) proportions."""
    if not alpha > 0:
        raise PartitionError(f"dirichlet alpha must be > 0; got {alpha!r}")
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        props = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def shards(
    labels: np.ndarray, num_clients: int, *, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Return index arrays made of ``shards_per_client`` label-sorted shards each."""
    total = num_clients * shards_per_client
    if total > len(labels):
        raise PartitionError(
            f"shards: {num_clients} clients x {shards_per_client} shards "
            f"needs at least {total} samples; got {len(labels)}"
        )
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, total)
    deal = rng.permutation(total)
    return [
        np.sort(
            np.concatenate(
                [pieces[s] for s in deal[c * shards_per_client : (c + 1) * shards_per_client]]
            )
        )
        for c in range(num_clients)
    ]


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    method: str,
    alpha: float,
    shards_per_client: int,
    seed: int,
    min_samples: int,
) -> list[np.ndarray]:
    """Split sample indices across clients with the named method.

    Raises:
        PartitionError: unknown method, or a client left with fewer than ``min_samples``.
    """
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1; got {num_clients}")
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = iid(len(labels), num_clients, rng=rng)
    elif method == "dirichlet":
        parts = dirichlet(labels, num_clients, alpha=alpha, rng=rng)
    elif method == "shards":
        parts = shards(labels, num_clients, shards_per_client=shards_per_client, rng=rng)
    else:
        raise PartitionError(f"data.partition must be iid, dirichlet or shards; got {method!r}")
    sizes = [len(p) for p in parts]
    small = [i for i, s in enumerate(sizes) if s < min_samples]
    if small:
        raise PartitionError(
            f"{method} partition of {len(labels)} samples over {num_clients} clients leaves "
            f"client(s) {small[:10]} with fewer than {min_samples} samples (sizes "
            f"{[sizes[i] for i in small[:10]]}); use fewer clients, a larger data.alpha, or iid"
        )
    return parts


__all__ = ["dirichlet", "iid", "partition", "shards"]
