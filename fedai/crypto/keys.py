"""Key sets for secure aggregation: one entry point for every registered scheme.

:func:`create_keys` makes a key set of any scheme in the registry (:mod:`fedai.schemes`)
and writes it in the generic bundle format (:mod:`fedai.crypto.bundle`): a secret
``client.bundle`` and a public ``coordinator.bundle``, both mode 0600, in a directory
created with mode 0700. What the bundles hold is the scheme's business:

* ``ckks`` (:mod:`fedai.crypto.ckks_keys`): a TenSEAL context; the coordinator's has no
  key at all;
* ``paillier`` (:mod:`fedai.crypto.paillier_keys`): a ``phe`` key pair; the coordinator's
  holds the public key ``n`` only.

The CKKS loaders keep their historical names here (:func:`load_client_bundle`,
:func:`load_coordinator_bundle`); each scheme's own module has its loaders.
"""

from __future__ import annotations

import os
from typing import Any

from fedai.crypto.bundle import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    KEY_DIR_MODE,
    BundleInfo,
    read_bundle_info,
    scheme_of_key_dir,
)
from fedai.crypto.ckks_keys import (
    ENCRYPTIONS,
    MAX_TOTAL_BITS_128,
    CkksParameters,
    ClientBundle,
    CoordinatorBundle,
    Encryption,
    load_client_bundle,
    load_coordinator_bundle,
)
from fedai.errors import ConfigError


def create_keys(
    out_dir: str | os.PathLike[str],
    *,
    scheme: str = "ckks",
    force: bool = False,
    overwrite: bool = False,
    **params: Any,
) -> Any:
    """Generate a key set of ``scheme`` and write its two bundles into ``out_dir``.

    Args:
        out_dir: Directory to write into (created with mode 0700 if missing).
        scheme: A registered scheme with keys (``fedai.schemes.key_scheme_names()``).
        force: Accept parameters below fedai's security floor (within hard limits).
        overwrite: Replace an existing key set in ``out_dir``.
        **params: The scheme's own parameters (e.g. ``poly_modulus_degree`` for CKKS,
            ``key_bits`` for Paillier).

    Returns:
        The scheme's new client bundle (it has a ``fingerprint``).

    Raises:
        ConfigError: Unknown scheme or malformed parameters.
        InsecureParametersError: Parameters below the floor and not forced.
        KeyFileError: ``out_dir`` already holds a key set and ``overwrite`` is False, or
            it cannot be written.
    """
    from fedai.schemes import key_scheme

    create = key_scheme(scheme, setting="keys scheme").create_keys
    if create is None:  # pragma: no cover - key_scheme() returns schemes with keys only
        raise ConfigError(f"keys scheme {scheme!r} has no keys")
    return create(out_dir, force=force, overwrite=overwrite, **params)


__all__ = [
    "CLIENT_BUNDLE",
    "COORDINATOR_BUNDLE",
    "ENCRYPTIONS",
    "KEY_DIR_MODE",
    "MAX_TOTAL_BITS_128",
    "BundleInfo",
    "CkksParameters",
    "ClientBundle",
    "CoordinatorBundle",
    "Encryption",
    "create_keys",
    "load_client_bundle",
    "load_coordinator_bundle",
    "read_bundle_info",
    "scheme_of_key_dir",
]
