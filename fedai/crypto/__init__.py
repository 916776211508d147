"""Secure aggregation crypto: key bundles and the CKKS secure-sum codec.

No Flower imports here: payloads are lists of numpy ``uint8`` arrays that the federation
layer puts in ``ArrayRecord`` objects. TenSEAL is imported lazily by the functions that need it.

Typical use::

    bundle = create_keys("keys/")                       # or: fedai keys create --out keys/
    codec = CkksCodec(load_client_bundle("keys/"))      # every client
    summer = CkksSum(load_coordinator_bundle("keys/"))  # the coordinator: no key at all
"""

from __future__ import annotations

from fedai.crypto.ckks import CkksCodec, CkksSum
from fedai.crypto.envelope import Envelope, PayloadKind, Scheme
from fedai.crypto.keys import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    BundleInfo,
    CkksParameters,
    ClientBundle,
    CoordinatorBundle,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
    read_bundle_info,
)

__all__ = [
    "CLIENT_BUNDLE",
    "COORDINATOR_BUNDLE",
    "BundleInfo",
    "CkksCodec",
    "CkksParameters",
    "CkksSum",
    "ClientBundle",
    "CoordinatorBundle",
    "Envelope",
    "PayloadKind",
    "Scheme",
    "create_keys",
    "load_client_bundle",
    "load_coordinator_bundle",
    "read_bundle_info",
]
