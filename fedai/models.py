"""Model registry: logistic regression, MLP and a small CNN, all Opacus-compatible.

No BatchNorm anywhere (per-sample gradients need samples to be independent in a batch);
the CNN normalises with GroupNorm. Every model maps a float tensor of shape
``(batch, *input_shape)`` to logits of shape ``(batch, num_classes)``.

A trained model is saved as ``model.pt`` (a plain ``state_dict``) beside ``model.json``
(:class:`ModelSpec`: name, input shape, class count, width), which is all
:func:`load_model` needs to rebuild it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedai.errors import ModelError

MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Everything needed to rebuild a registered model."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: int = 128

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`; raises :class:`ModelError` on a malformed dict."""
        try:
            return cls(
                name=str(d["name"]),
                input_shape=tuple(int(x) for x in d["input_shape"]),
                num_classes=int(d["num_classes"]),
                hidden=int(d.get("hidden", 128)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(
                f"model spec must have name, input_shape, num_classes; got {d!r}"
            ) from err


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer on flattened input."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(spec.input_shape), spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.linear(torch.flatten(x, 1))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Two hidden layers with ReLU on flattened input."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d = math.prod(spec.input_shape)
        self.fc1 = nn.Linear(d, spec.hidden)
        self.fc2 = nn.Linear(spec.hidden, spec.hidden)
        self.fc3 = nn.Linear(spec.hidden, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        h = torch.relu(self.fc1(torch.flatten(x, 1)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)  # type: ignore[no-any-return]


class SmallCNN(nn.Module):
    """Two conv blocks (GroupNorm, ReLU, pooling) and a linear head, for (C, H, W) input."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if len(spec.input_shape) != 3:
            raise ModelError(
                "model cnn needs image-shaped input (channels, height, width); "
                f"got input_shape {spec.input_shape}"
            )
        c, h, w = spec.input_shape
        if h < 4 or w < 4:
            raise ModelError(f"model cnn needs height and width >= 4; got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * (h // 4) * (w // 4), spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.head(torch.flatten(self.features(x), 1))  # type: ignore[no-any-return]


_REGISTRY: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "logreg": LogisticRegression,
    "mlp": MLP,
    "cnn": SmallCNN,
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted(_REGISTRY))


def build_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """Build the registered model for ``spec``; ``seed`` makes the initial weights repeatable.

    Raises:
        ModelError: unknown name or a shape the model cannot take.
    """
    if spec.name not in _REGISTRY:
        raise ModelError(f"model.name must be one of {', '.join(MODEL_NAMES)}; got {spec.name!r}")
    if spec.num_classes < 2:
        raise ModelError(f"num_classes must be >= 2; got {spec.num_classes}")
    if seed is None:
        return _REGISTRY[spec.name](spec)
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed also queues a lazy CUDA/XPU/MTIA seed
        # call, with a formatted stack trace, on every call (~0.4 ms, and the queue grows).
        torch.default_generator.manual_seed(int(seed))
        return _REGISTRY[spec.name](spec)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return the model's parameters and buffers as float32 numpy arrays, in state-dict order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays (state-dict order) into ``model``; raises :class:`ModelError` on mismatch."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ModelError(f"model expects {len(keys)} arrays; got {len(weights)}")
    state = {}
    for key, (name, ref), w in zip(keys, model.state_dict().items(), weights, strict=True):
        if tuple(ref.shape) != tuple(w.shape):
            raise ModelError(
                f"array {name} must have shape {tuple(ref.shape)}; got {tuple(w.shape)}"
            )
        state[key] = torch.as_tensor(np.asarray(w), dtype=ref.dtype)
    model.load_state_dict(state)


def save_model(out_dir: str | Path, model: nn.Module, spec: ModelSpec) -> Path:
    """Write ``model.pt`` (state dict) and ``model.json`` (spec) into ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), d / MODEL_FILE)
    (d / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    return d / MODEL_FILE


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model saved by :func:`save_model` (``path`` is the dir or its model.pt).

    Raises:
        ModelError: if either file is missing or does not match.
    """
    p = Path(path)
    d = p if p.is_dir() else p.parent
    try:
        spec = ModelSpec.from_dict(json.loads((d / SPEC_FILE).read_text(encoding="utf-8")))
        state = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise ModelError(
            f"saved model in {str(d)!r} must have {MODEL_FILE} and {SPEC_FILE}: {err}"
        ) from err
    model = build_model(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"{MODEL_FILE} in {str(d)!r} does not match spec {spec}: {err}") from err
    model.eval()
    return model, spec


__all__ = [
    "MODEL_NAMES",
    "ModelSpec",
    "build_model",
    "get_weights",
    "load_model",
    "save_model",
    "set_weights",
]
