"""Hub data sets (MNIST, CIFAR-10, FEMNIST) through ``flwr-datasets`` (the ``hub`` extra).

This module downloads on first use, so tests exercise only :func:`records_to_arrays`
(on a small in-code fixture) and the clear error raised when the extra is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fedai.errors import DataError

# name -> (Hugging Face dataset id, image column, label column, num classes)
HUB_SETS: dict[str, tuple[str, str, str, int]] = {
    "mnist": ("ylecun/mnist", "image", "label", 10),
    "cifar10": ("uoft-cs/cifar10", "img", "label", 10),
    "femnist": ("flwrlabs/femnist", "image", "character", 62),
}


def records_to_arrays(
    records: Iterable[Mapping[str, Any]], *, image_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Convert hub records (PIL images or arrays + int labels) to (N, C, H, W) float32 in [0,1].

    Raises:
        DataError: if a record lacks a key or images have inconsistent shapes.
    """
    xs, ys = [], []
    for i, rec in enumerate(records):
        if image_key not in rec or label_key not in rec:
            raise DataError(
                f"hub record {i} must have keys {image_key!r} and {label_key!r}; got {sorted(rec)}"
            )
        img = np.asarray(rec[image_key], dtype=np.float32)
        if img.ndim == 2:
            img = img[None, :, :]
        elif img.ndim == 3:
            img = np.transpose(img, (2, 0, 1))
        else:
            raise DataError(f"hub record {i}: image must be 2-D or 3-D; got shape {img.shape}")
        xs.append(img / 255.0 if img.max(initial=0) > 1.0 else img)
        ys.append(int(rec[label_key]))
    if not xs:
        raise DataError("hub split holds no records")
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise DataError(f"hub images must all have one shape; got {sorted(shapes)[:3]}")
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)


def load_hub(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Download (once, cached by Hugging Face) and return the train split of ``name``.

    Raises:
        DataError: unknown name, or the ``hub`` extra (flwr-datasets) is not installed.
    """
    if name not in HUB_SETS:
        raise DataError(f"data.dataset hub:NAME must name one of {sorted(HUB_SETS)}; got {name!r}")
    try:
        from flwr_datasets import FederatedDataset
    except ImportError as err:
        raise DataError(f"hub:{name} needs the hub extra: pip install 'fedai[hub]'") from err
    repo, image_key, label_key, num_classes = HUB_SETS[name]
    fds = FederatedDataset(dataset=repo, partitioners={"train": 1})
    split = fds.load_split("train")
    x, y = records_to_arrays(split, image_key=image_key, label_key=label_key)
    return x, y, num_classes


__all__ = ["HUB_SETS", "load_hub", "records_to_arrays"]
