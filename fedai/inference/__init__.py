"""Encrypted inference on linear layers (TenSEAL CKKS) and its gRPC service.

A querier encrypts feature rows under its own CKKS key and sends them with a public
context (no secret key); the model holder evaluates ``W x + b`` on the ciphertexts and
returns encrypted scores only the querier can decrypt. An MLP takes one round trip per
linear layer, the querier applying ReLU in between.

The names below are imported on first use: ``fedai --help`` imports
:mod:`fedai.inference.cli`, and with it this package, and must not pay for TenSEAL and
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedai.inference.encoding import (
        DEFAULT_PROFILE,
        Activation,
        CkksProfile,
        EncryptedBatch,
        EncryptedScores,
        LayerInfo,
        Layout,
        choose_layout,
    )
    from fedai.inference.holder import LinearLayer, ModelHolder, layers_from_model
    from fedai.inference.querier import LayerEvaluator, Querier, encrypted_predict

_EXPORTS: dict[str, str] = {
    "DEFAULT_PROFILE": "fedai.inference.encoding",
    "Activation": "fedai.inference.encoding",
    "CkksProfile": "fedai.inference.encoding",
    "EncryptedBatch": "fedai.inference.encoding",
    "EncryptedScores": "fedai.inference.encoding",
    "LayerEvaluator": "fedai.inference.querier",
    "LayerInfo": "fedai.inference.encoding",
    "Layout": "fedai.inference.encoding",
    "LinearLayer": "fedai.inference.holder",
    "ModelHolder": "fedai.inference.holder",
    "Querier": "fedai.inference.querier",
    "choose_layout": "fedai.inference.encoding",
    "encrypted_predict": "fedai.inference.querier",
    "layers_from_model": "fedai.inference.holder",
}

__all__ = [
    "DEFAULT_PROFILE",
    "Activation",
    "CkksProfile",
    "EncryptedBatch",
    "EncryptedScores",
    "LayerEvaluator",
    "LayerInfo",
    "Layout",
    "LinearLayer",
    "ModelHolder",
    "Querier",
    "choose_layout",
    "encrypted_predict",
    "layers_from_model",
]


def __getattr__(name: str) -> Any:
    """Import an exported name on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedai.inference' has no attribute {name!r}")
