"""Per-client feature standardisation (z-score) from the client's own training split.

Models and the secure-aggregation bound (``secure_aggregation.update_bound``) assume
features of order one. The built-in sets are scaled at the source; a user's own file is
not (breast cancer's ``area`` column reaches ~2500), so :func:`fit` computes each
feature's mean and standard deviation on the client's **training split only** and
:meth:`Standardizer.transform` applies them to both splits (LeCun et al., "Efficient
BackProp", 1998, Sec. 4.3: zero-mean, unit-variance inputs). The statistics never leave
the node, and the test split never informs them.

Which sources are standardised (``data.standardize``, see :func:`resolve`):

* ``auto`` (default): file sources (``csv:``, ``npz:``, a real node's ``data-path``).
  Not the built-in sets (already scaled) and not ``hub:`` images, which the hub loader
  scales to [0, 1] like ``digits``: per-pixel z-scores divide a rarely-inked border
  pixel by its tiny spread (on ``digits``, 10 Dirichlet clients, they reach 25 from
  inputs in [0, 1]).
* ``zscore``: every source. ``none``: no source.

A feature that is constant on the training split (standard deviation 0) is only
centred (scale 1), never divided by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from fedai.config import StandardizeMode
from fedai.errors import ConfigError, DataError

#: The values ``data.standardize`` accepts.
MODES: tuple[str, ...] = get_args(StandardizeMode)


@dataclass(frozen=True, slots=True)
class Standardizer:
    """Per-feature ``(x - mean) / scale``; ``scale`` is 1 where the feature is constant."""

    mean: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return standardised float32 features; ``x`` is not modified.

        Raises:
            DataError: ``x``'s sample shape differs from the fitted one.
        """
        if tuple(x.shape[1:]) != self.mean.shape:
            raise DataError(
                f"features to standardise must have sample shape {self.mean.shape}; "
                f"got {tuple(x.shape[1:])}"
            )
        out: np.ndarray = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return out.astype(np.float32)


def fit(x_train: np.ndarray) -> Standardizer:
    """Per-feature mean and standard deviation (population, ddof 0) of ``x_train``.

    Computed in float64 over axis 0, so image-shaped features get per-pixel statistics.

    Raises:
        DataError: ``x_train`` holds no sample.
    """
    if len(x_train) == 0:
        raise DataError("standardisation needs at least one training sample; got 0")
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return Standardizer(mean=mean, scale=np.where(std > 0, std, 1.0))


def resolve(mode: str, *, file_source: bool) -> bool:
    """Whether ``data.standardize = mode`` standardises a source.

    Args:
        mode: ``auto``, ``none`` or ``zscore``.
        file_source: The features come from a user's file (``csv:``, ``npz:`` or a
            node's ``data-path``).

    Raises:
        ConfigError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise ConfigError(f"data.standardize must be one of {', '.join(MODES)}; got {mode!r}")
    return mode == "zscore" or (mode == "auto" and file_source)


__all__ = ["MODES", "Standardizer", "fit", "resolve"]
