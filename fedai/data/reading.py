"""How a real node reads and splits its own file: decided by the node, never the coordinator.

Every answer a node gives about its data is a release. If the coordinator could choose
the label column, the test fraction, the standardisation and (through the experiment
seed) the split's permutation, it could pick a one-row test split holding the row it
wants and read that row back through evaluation metrics of models it crafts. So on a node
with its own ``data-path`` these come from the node's configuration (Flower
``node_config``, set by the operator), with fixed fedai defaults, and the coordinator's
``data.*`` keys are ignored. In simulation (no ``data-path``) the experiment config is the
experimenter's, and its ``data.*`` keys are the defaults.

Node-config keys (all optional):

=======================  ===============================================================
``label-column``         The CSV column holding the label (default ``label``).
``num-classes``          The number of classes the node announces (default: the largest
                         label + 1). A label outside it is a data error.
``test-fraction``        Share of rows held out for evaluation, in (0, 1) (default 0.2).
``min-test-examples``    The evaluation split's minimum size (default 20): the split holds
                         at least that many rows, and a file too small for it is refused.
``standardize``          ``auto`` (default; a file is z-scored) | ``zscore`` | ``none``.
``split-seed``           Any string: makes the split reproducible for the operator. Without
                         it the split is keyed by a secret: 32 bytes of OS entropy kept in
                         ``state-dir`` (file ``split-key``, mode 0600), else a SHA-256 digest
                         of the data file (secret as long as the file is).
=======================  ===============================================================

The split's permutation is a keyed hash order (BLAKE2b with the split key, one digest per
row index, sorted): a pseudorandom permutation to anyone without the key (Aumasson et al.,
"BLAKE2: simpler, smaller, fast as MD5", 2013, keyed mode as a PRF), so the coordinator
can neither choose nor predict which rows are held out.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from fedai.config import StandardizeMode
from fedai.errors import ConfigError, DataError

NODE_LABEL_COLUMN = "label-column"
NODE_NUM_CLASSES = "num-classes"
NODE_TEST_FRACTION = "test-fraction"
NODE_MIN_TEST_EXAMPLES = "min-test-examples"
NODE_STANDARDIZE = "standardize"
NODE_SPLIT_SEED = "split-seed"

#: Every node-config key this module reads.
READING_KEYS = (
    NODE_LABEL_COLUMN,
    NODE_NUM_CLASSES,
    NODE_TEST_FRACTION,
    NODE_MIN_TEST_EXAMPLES,
    NODE_STANDARDIZE,
    NODE_SPLIT_SEED,
)
DEFAULT_MIN_TEST_EXAMPLES = 20
SPLIT_KEY_FILE = "split-key"
SPLIT_KEY_BYTES = 32
_DIGEST_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReading:
    """How a node reads and splits its own file (see the module docstring).

    Attributes:
        label_column: The CSV label column.
        num_classes: The class count to announce, or None (largest label + 1).
        test_fraction: Share of rows held out for evaluation.
        min_test_examples: The evaluation split's minimum size.
        standardize: ``auto``, ``zscore`` or ``none``.
        split_seed: The operator's split seed, or None (a secret key is used).
    """

    label_column: str = "label"
    num_classes: int | None = None
    test_fraction: float = 0.2
    min_test_examples: int = DEFAULT_MIN_TEST_EXAMPLES
    standardize: str = "auto"
    split_seed: str | None = None

    @classmethod
    def from_node_config(cls, node: Mapping[str, object]) -> NodeReading:
        """Read the node's settings; absent keys take fedai's defaults (not the coordinator's).

        Raises:
            ConfigError: a key has a value of the wrong type or range (all problems at once).
        """
        problems: list[str] = []

        def text(key: str) -> str | None:
            value = node.get(key)
            return None if value is None or str(value) == "" else str(value)

        def integer(key: str, lo: int) -> int | None:
            raw = text(key)
            if raw is None:
                return None
            try:
                value = int(raw)
            except ValueError:
                value = lo - 1
            if value < lo:
                problems.append(f"node_config {key} must be an integer >= {lo}; got {raw!r}")
                return None
            return value

        fraction = 0.2
        raw_fraction = text(NODE_TEST_FRACTION)
        if raw_fraction is not None:
            try:
                fraction = float(raw_fraction)
            except ValueError:
                fraction = math.nan
            if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
                problems.append(
                    f"node_config {NODE_TEST_FRACTION} must be a number in (0, 1); "
                    f"got {raw_fraction!r}"
                )
        standardize = text(NODE_STANDARDIZE) or "auto"
        if standardize not in get_args(StandardizeMode):
            problems.append(
                f"node_config {NODE_STANDARDIZE} must be one of "
                f"{', '.join(get_args(StandardizeMode))}; got {standardize!r}"
            )
        num_classes = integer(NODE_NUM_CLASSES, 2)
        min_test = integer(NODE_MIN_TEST_EXAMPLES, 1)
        if problems:
            raise ConfigError(problems)
        return cls(
            label_column=text(NODE_LABEL_COLUMN) or "label",
            num_classes=num_classes,
            test_fraction=fraction,
            min_test_examples=DEFAULT_MIN_TEST_EXAMPLES if min_test is None else min_test,
            standardize=standardize,
            split_seed=text(NODE_SPLIT_SEED),
        )

    def test_size(self, n: int, *, what: str) -> int:
        """The evaluation split's size for ``n`` rows: the fraction, at least the minimum.

        Raises:
            DataError: ``n`` rows cannot give the minimum and at least one training row.
        """
        need = self.min_test_examples + 1
        if n < need:
            raise DataError(
                f"{what}: must hold at least {need} rows ({NODE_MIN_TEST_EXAMPLES} "
                f"{self.min_test_examples} plus one training row); got {n}"
            )
        return min(max(self.min_test_examples, round(n * self.test_fraction)), n - 1)


def split_key(*, split_seed: str | None, state_dir: str | None, data_path: str) -> bytes:
    """The secret that keys a node's split (see the module docstring for the order).

    Raises:
        DataError: the state dir's key file is unreadable or malformed, or the data file
            cannot be read.
    """
    if split_seed is not None:
        return hashlib.sha256(b"fedai.split-seed\0" + split_seed.encode()).digest()
    if state_dir is not None:
        return _state_key(Path(state_dir) / SPLIT_KEY_FILE)
    digest = hashlib.sha256(b"fedai.split-file\0")
    try:
        with open(data_path, "rb") as fh:
            while chunk := fh.read(_DIGEST_CHUNK):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"data file {data_path!r} cannot be read: {err.strerror}") from err
    return digest.digest()


def _state_key(path: Path) -> bytes:
    """Load the state dir's split key, creating it (0600, atomically) on first use."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(SPLIT_KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another process just wrote
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"split key {str(path)!r} cannot be read: {err.strerror}") from err
    if len(raw) != SPLIT_KEY_BYTES:
        raise DataError(
            f"split key {str(path)!r} must hold {SPLIT_KEY_BYTES} bytes; got {len(raw)} "
            "(delete it only if the node's split may change: rows held out so far would "
            "then be trained on)"
        )
    return raw


def keyed_permutation(n: int, key: bytes) -> np.ndarray:
    """A permutation of ``range(n)`` that only the holder of ``key`` can compute.

    Rows are ordered by ``BLAKE2b(index, key=key)`` (ties, which need a 64-bit collision,
    by index).
    """
    if not 1 <= len(key) <= 64:
        raise ConfigError(f"split key must be 1..64 bytes; got {len(key)}")
    tags = b"".join(
        hashlib.blake2b(i.to_bytes(8, "little"), key=key, digest_size=8).digest() for i in range(n)
    )
    order: np.ndarray = np.argsort(np.frombuffer(tags, dtype="<u8"), kind="stable")
    return order


__all__ = [
    "DEFAULT_MIN_TEST_EXAMPLES",
    "NODE_LABEL_COLUMN",
    "NODE_MIN_TEST_EXAMPLES",
    "NODE_NUM_CLASSES",
    "NODE_SPLIT_SEED",
    "NODE_STANDARDIZE",
    "NODE_TEST_FRACTION",
    "READING_KEYS",
    "NodeReading",
    "keyed_permutation",
    "split_key",
]
