"""Encrypted inference on linear layers (TenSEAL CKKS) and its gRPC service.

A querier encrypts feature rows under its own CKKS key and sends them with a public
context (no secret key); the model holder evaluates ``W x + b`` on the ciphertexts and
returns encrypted scores only the querier can decrypt. An MLP takes one round trip per
linear layer, the querier applying ReLU in between.
"""

from __future__ import annotations

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
