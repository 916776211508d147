"""Secure aggregation crypto: key bundles, the CKKS and Paillier secure-sum codecs.

No Flower imports here: payloads are lists of numpy ``uint8`` arrays that the federation
layer puts in ``ArrayRecord`` objects. TenSEAL and phe are imported lazily by the
functions that need them. Schemes are registered in :mod:`fedai.schemes`.

Typical use::

    bundle = create_keys("keys/")                       # or: fedai keys create --out keys/
    codec = CkksCodec(load_client_bundle("keys/"))      # every client
    summer = CkksSum(load_coordinator_bundle("keys/"))  # the coordinator: no key at all

    create_keys("pk/", scheme="paillier")               # fedai keys create --scheme paillier
    codec = PaillierCodec(load_paillier_client_bundle("pk/"))
    summer = PaillierSum(load_paillier_coordinator_bundle("pk/"))  # public key only
"""

from __future__ import annotations

from fedai.crypto.bundle import BundleInfo, read_bundle_info, scheme_of_key_dir
from fedai.crypto.ckks import CkksCodec, CkksSum
from fedai.crypto.envelope import Envelope, PayloadKind, Scheme
from fedai.crypto.keys import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    CkksParameters,
    ClientBundle,
    CoordinatorBundle,
    create_keys,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.crypto.paillier import PaillierCodec, PaillierSum
from fedai.crypto.paillier_keys import (
    PaillierClientBundle,
    PaillierCoordinatorBundle,
    load_paillier_client_bundle,
    load_paillier_coordinator_bundle,
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
    "PaillierClientBundle",
    "PaillierCodec",
    "PaillierCoordinatorBundle",
    "PaillierSum",
    "PayloadKind",
    "Scheme",
    "create_keys",
    "load_client_bundle",
    "load_coordinator_bundle",
    "load_paillier_client_bundle",
    "load_paillier_coordinator_bundle",
    "read_bundle_info",
    "scheme_of_key_dir",
]
