"""Local data files for on-prem client agents: ``csv:PATH`` and ``npz:PATH``.

CSV: a header row, numeric feature columns and one integer label column (name from
``data.label_column``, default ``label``). NPZ: arrays ``X`` (n, ...) and ``y`` (n,).
Every problem (missing file, unreadable, missing label column, NaN, non-numeric value,
length mismatch) raises :class:`~fedai.errors.DataError` naming the file, what was
expected and what was found.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from fedai.errors import DataError


def _labels(path: Path, raw: np.ndarray) -> np.ndarray:
    if raw.ndim != 1:
        raise DataError(f"{path}: labels must be one-dimensional; got shape {raw.shape}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise DataError(f"{path}: labels must be finite integers; got NaN or inf")
        if not np.all(raw == np.round(raw)):
            raise DataError(f"{path}: labels must be integers; got non-integer values")
    elif raw.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers; got dtype {raw.dtype}")
    y = raw.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0; got {int(y.min())}")
    return y


def _features(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: features must be numeric; got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        rows = np.flatnonzero(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1))
        raise DataError(
            f"{path}: features must be finite; got NaN/inf in row(s) {rows[:5].tolist()}"
        )
    return x


def load_csv(path: str | Path, *, label_column: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` from a CSV file with a header and a label column."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError as err:
        raise DataError(f"data file {str(p)!r} does not exist") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data file {str(p)!r} cannot be read as CSV: {err}") from err
    if len(rows) < 2:
        raise DataError(
            f"{p}: expected a header row and at least one data row; got {len(rows)} row(s)"
        )
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"{p}: label column {label_column!r} not found; columns are {header[:20]}")
    li = header.index(label_column)
    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{p}: line {r} must have {len(header)} fields; got {len(row)}")
        for c, cell in enumerate(row):
            try:
                values[r - 2, c] = float(cell)
            except ValueError as err:
                raise DataError(
                    f"{p}: line {r} column {header[c]!r} must be numeric; got {cell!r}"
                ) from err
    if np.isnan(values[:, li]).any():
        raise DataError(f"{p}: label column {label_column!r} must not be empty or NaN")
    y = _labels(p, values[:, li])
    x = _features(p, np.delete(values, li, axis=1))
    if x.shape[1] == 0:
        raise DataError(f"{p}: expected at least one feature column besides {label_column!r}")
    return x, y


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` from an ``.npz`` file holding arrays ``X`` and ``y``."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as data:
            missing = [k for k in ("X", "y") if k not in data.files]
            if missing:
                raise DataError(
                    f"{p}: expected arrays X and y; missing {missing}, found {data.files}"
                )
            x_raw, y_raw = data["X"], data["y"]
    except FileNotFoundError as err:
        raise DataError(f"data file {str(p)!r} does not exist") from err
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"data file {str(p)!r} cannot be read as .npz: {err}") from err
    y = _labels(p, y_raw)
    x = _features(p, x_raw)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"{p}: X and y must have the same non-zero length; got {len(x)} and {len(y)}"
        )
    return x, y


__all__ = ["load_csv", "load_npz"]
