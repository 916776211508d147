"""Paillier key sets: the private key for clients, the public key only for the coordinator.

:func:`create_paillier_keys` generates a ``phe`` key pair (Paillier, EUROCRYPT 1999) and
writes it in the generic bundle format (:mod:`fedai.crypto.bundle`):

* ``client.bundle`` -- the primes ``p, q`` (the private key). Every client holds it: clients
  encrypt (through the CRT, :mod:`fedai.crypto.paillier_math`) and decrypt the aggregate.
* ``coordinator.bundle`` -- the public modulus ``n`` only. The coordinator multiplies
  ciphertexts mod ``n^2`` (Paillier addition) and can never decrypt.

Both carry the fingerprint ``SHA-256(domain || n)``: ``n`` determines ``p, q`` (unique
factorisation), so it commits to the whole key pair; a client bundle whose primes do not
multiply to the fingerprinted ``n`` is refused. Both carry the payload-authentication key
too (mode 0600 for both, as for CKKS).

Key sizes (NIST SP 800-57 Part 1 rev. 5, table 2): 2048 bits give 112-bit security
(acceptable through 2030), **3072 bits give 128-bit security (the default)**. fedai refuses
keys shorter than 2048 bits unless forced, and shorter than 1024 bits (80-bit) always.
Unlike CKKS, the coordinator's bundle holds a *public key*: it can encrypt values of its
own choosing. What stops it from injecting them is the payload tag, whose key it also
holds -- see ``docs/threat_model.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path
from typing import Any, Self

from fedai.crypto.bundle import (
    CLIENT_BUNDLE,
    COORDINATOR_BUNDLE,
    BundleInfo,
    BundleKind,
    key_set_fields,
    new_metadata,
    pack_bundle,
    prepare_key_dir,
    read_bundle,
    resolve,
    write_key_set,
)
from fedai.crypto.paillier_math import PublicKey, SecretKey, modulus_problems, security_bits
from fedai.errors import ConfigError, InsecureParametersError, KeyFileError

logger = logging.getLogger(__name__)

SCHEME_NAME = "paillier"
DEFAULT_KEY_BITS = 3072
#: fedai's floor without ``force`` (112-bit security).
MIN_KEY_BITS = 2048
#: Refused even when forced (80-bit security and below).
HARD_MIN_KEY_BITS = 1024
MAX_KEY_BITS = 8192
_FINGERPRINT_DOMAIN = b"fedai/paillier-key-fingerprint/v1\x00"
_LEN = struct.Struct(">I")


def _n_bytes(n: int, key_bits: int) -> bytes:
    return n.to_bytes((key_bits + 7) // 8, "big")


def fingerprint_of(n: int, key_bits: int) -> bytes:
    """The key-set fingerprint: SHA-256 over a domain tag and ``n`` (fixed width)."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + _n_bytes(n, key_bits)).digest()


class _Bundle:
    """Shared parts of both bundles: public key, fingerprint, MAC key, metadata."""

    kind: BundleKind

    def __init__(self) -> None:
        raise TypeError(
            f"build a {type(self).__name__} with create_paillier_keys() or a load_*() "
            "function, not directly"
        )

    _public: PublicKey
    _fingerprint: bytes
    _mac_key: bytes
    _meta: dict[str, Any]

    @property
    def fingerprint(self) -> bytes:
        """32-byte key-set fingerprint (identical in both bundles of one key set)."""
        return self._fingerprint

    @property
    def public_key(self) -> PublicKey:
        """The public modulus and ciphertext arithmetic."""
        return self._public

    @property
    def key_bits(self) -> int:
        """Bit length of ``n``."""
        return self._public.bits

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fingerprint={self._fingerprint.hex()[:16]}, "
            f"key_bits={self.key_bits})"
        )


class PaillierCoordinatorBundle(_Bundle):
    """The coordinator's bundle: the public modulus ``n``, never a prime factor."""

    kind: BundleKind = "coordinator"

    @classmethod
    def _wrap(
        cls, public: PublicKey, *, fingerprint: bytes, mac_key: bytes, meta: dict[str, Any]
    ) -> Self:
        obj = cls.__new__(cls)
        obj._public = public
        obj._fingerprint = fingerprint
        obj._mac_key = mac_key
        obj._meta = dict(meta)
        return obj

    def is_private(self) -> bool:
        """Return whether this bundle holds the private key (never)."""
        return False

    def serialize(self) -> bytes:
        """Return the bundle file bytes."""
        return pack_bundle(self._meta, "coordinator", _n_bytes(int(self._public.n), self.key_bits))


class PaillierClientBundle(_Bundle):
    """A client's bundle: the private key (``p, q``) and everything public."""

    kind: BundleKind = "client"
    _secret: SecretKey

    @classmethod
    def _wrap(
        cls, secret: SecretKey, *, fingerprint: bytes, mac_key: bytes, meta: dict[str, Any]
    ) -> Self:
        obj = cls.__new__(cls)
        obj._secret = secret
        obj._public = secret.public
        obj._fingerprint = fingerprint
        obj._mac_key = mac_key
        obj._meta = dict(meta)
        return obj

    def is_private(self) -> bool:
        """Return whether this bundle holds the private key (always)."""
        return True

    def serialize(self, include_secret_key: bool = False) -> bytes:
        """Return bundle file bytes; without the secret key that is the coordinator bundle.

        Args:
            include_secret_key: Write the client bundle (primes included). Default False,
                as in TenSEAL: the safe default is the shareable form.
        """
        if not include_secret_key:
            return self.to_public().serialize()
        parts = []
        for prime in (self._secret.p, self._secret.q):
            raw = int(prime).to_bytes((int(prime.bit_length()) + 7) // 8, "big")
            parts += [_LEN.pack(len(raw)), raw]
        return pack_bundle(self._meta, "client", b"".join(parts))

    def to_public(self) -> PaillierCoordinatorBundle:
        """Return the coordinator bundle of this key set (public key only)."""
        return PaillierCoordinatorBundle._wrap(
            PublicKey(int(self._public.n)),
            fingerprint=self._fingerprint,
            mac_key=self._mac_key,
            meta=self._meta,
        )


def _key_bits(meta: dict[str, Any], path: Path) -> int:
    params = meta.get("params")
    bits = params.get("key_bits") if isinstance(params, dict) else None
    if not isinstance(bits, int) or not HARD_MIN_KEY_BITS <= bits <= MAX_KEY_BITS:
        raise KeyFileError(
            f"{path}: expected params.key_bits in [{HARD_MIN_KEY_BITS}, {MAX_KEY_BITS}]; "
            f"got {bits!r}"
        )
    return bits


def _primes(body: bytes, path: Path) -> tuple[int, int]:
    out: list[int] = []
    i = 0
    for _ in range(2):
        if i + _LEN.size > len(body):
            raise KeyFileError(f"{path}: expected two length-prefixed primes; got truncated bytes")
        (k,) = _LEN.unpack_from(body, i)
        i += _LEN.size
        if k > MAX_KEY_BITS // 8 or i + k > len(body):
            raise KeyFileError(f"{path}: expected a prime of <= {MAX_KEY_BITS // 16} bytes")
        out.append(int.from_bytes(body[i : i + k], "big"))
        i += k
    if i != len(body):
        raise KeyFileError(f"{path}: expected two primes only; got {len(body) - i} more bytes")
    return out[0], out[1]


def load_paillier_client_bundle(path: str | os.PathLike[str]) -> PaillierClientBundle:
    """Load a Paillier client bundle (private key included) and check it.

    Args:
        path: The bundle file, or the key directory holding ``client.bundle``.

    Returns:
        The bundle.

    Raises:
        KeyFileError: The file is missing, not a Paillier client bundle, corrupted, its
            primes are not a valid key, or they do not match the fingerprint.
    """
    p = resolve(path, CLIENT_BUNDLE)
    meta, body = read_bundle(p, kind="client", scheme=SCHEME_NAME)
    fingerprint, mac_key = key_set_fields(meta, p)
    bits = _key_bits(meta, p)
    prime_p, prime_q = _primes(body, p)
    try:
        secret = SecretKey(prime_p, prime_q)
    except ValueError as err:
        raise KeyFileError(f"{p}: expected a valid Paillier private key; got: {err}") from err
    if secret.public.bits != bits:
        raise KeyFileError(f"{p}: expected a {bits}-bit modulus; got {secret.public.bits} bits")
    actual = fingerprint_of(int(secret.public.n), bits)
    if actual != fingerprint:
        raise KeyFileError(
            f"{p}: expected the private key to match fingerprint "
            f"{fingerprint.hex()[:16]}; got {actual.hex()[:16]}"
        )
    bundle: PaillierClientBundle = PaillierClientBundle._wrap(
        secret, fingerprint=fingerprint, mac_key=mac_key, meta=meta
    )
    return bundle


def load_paillier_coordinator_bundle(
    path: str | os.PathLike[str],
) -> PaillierCoordinatorBundle:
    """Load a Paillier coordinator bundle (public key only) and check it.

    Args:
        path: The bundle file, or the key directory holding ``coordinator.bundle``.

    Returns:
        The bundle.

    Raises:
        KeyFileError: The file is missing, not a Paillier coordinator bundle, corrupted,
            holds more than the modulus, or the modulus does not match the fingerprint.
    """
    p = resolve(path, COORDINATOR_BUNDLE)
    meta, body = read_bundle(p, kind="coordinator", scheme=SCHEME_NAME)
    fingerprint, mac_key = key_set_fields(meta, p)
    bits = _key_bits(meta, p)
    if len(body) != (bits + 7) // 8:
        raise KeyFileError(
            f"{p}: expected the {bits}-bit public modulus only ({(bits + 7) // 8} bytes); "
            f"got {len(body)} bytes"
        )
    n = int.from_bytes(body, "big")
    problems = modulus_problems(n, bits)
    if problems:
        raise KeyFileError(f"{p}: expected a Paillier public key; " + "; ".join(problems))
    if fingerprint_of(n, bits) != fingerprint:
        raise KeyFileError(
            f"{p}: expected the public key to match fingerprint {fingerprint.hex()[:16]}; "
            "got another"
        )
    bundle: PaillierCoordinatorBundle = PaillierCoordinatorBundle._wrap(
        PublicKey(n), fingerprint=fingerprint, mac_key=mac_key, meta=meta
    )
    return bundle


def key_problems(key_bits: int, *, force: bool) -> tuple[list[str], list[str]]:
    """Return (hard problems, security problems) of a requested key size."""
    hard: list[str] = []
    if not HARD_MIN_KEY_BITS <= key_bits <= MAX_KEY_BITS or key_bits % 2:
        hard.append(
            f"key_bits must be an even number in [{HARD_MIN_KEY_BITS}, {MAX_KEY_BITS}] "
            f"(below {HARD_MIN_KEY_BITS} is refused even when forced); got {key_bits}"
        )
    insecure: list[str] = []
    if not hard and key_bits < MIN_KEY_BITS:
        insecure.append(
            f"key_bits must be >= {MIN_KEY_BITS} (112-bit security, NIST SP 800-57); got "
            f"{key_bits} ({security_bits(key_bits)}-bit)"
        )
    return hard, insecure


def describe(info: BundleInfo) -> dict[str, Any]:
    """The public description of a Paillier bundle for ``fedai keys show``."""
    bits = _key_bits({"params": info.params}, info.path)
    security = security_bits(bits)
    return {
        "key_bits": bits,
        "security_bits": security,
        "secure_128": security >= 128,
        "summary": f"n={bits} bits  ({security}-bit security, NIST SP 800-57)",
        "security": (
            f"{security}-bit"
            + ("" if security >= 128 else "; 3072-bit keys give 128")
            + (" (BELOW fedai's 2048-bit floor: forced)" if bits < MIN_KEY_BITS else "")
        ),
    }


def create_paillier_keys(
    out_dir: str | os.PathLike[str],
    *,
    key_bits: int = DEFAULT_KEY_BITS,
    force: bool = False,
    overwrite: bool = False,
) -> PaillierClientBundle:
    """Generate a Paillier key pair with ``phe`` and write both bundles into ``out_dir``.

    Args:
        out_dir: Directory to write into; created with mode 0700 if missing.
        key_bits: Bit length of ``n`` (default 3072: 128-bit security).
        force: Accept 1024 <= key_bits < 2048.
        overwrite: Replace an existing key set in ``out_dir``.

    Returns:
        The new client bundle.

    Raises:
        ConfigError: ``key_bits`` is not an even number in [1024, 8192].
        InsecureParametersError: ``key_bits`` < 2048 and not forced.
        KeyFileError: ``out_dir`` holds a key set and ``overwrite`` is False, or it
            cannot be written.
    """
    import phe

    if isinstance(key_bits, bool) or not isinstance(key_bits, int):
        raise ConfigError(f"key_bits must be an integer; got {key_bits!r}")
    hard, insecure = key_problems(key_bits, force=force)
    if hard:
        raise ConfigError(hard)
    if insecure and not force:
        raise InsecureParametersError("; ".join(insecure) + " (pass force=True / --force)")
    if insecure:
        logger.warning("creating Paillier keys below 2048 bits (forced): %s", insecure[0])
    out = Path(out_dir)
    prepare_key_dir(out, overwrite=overwrite)
    public, private = phe.generate_paillier_keypair(n_length=key_bits)
    secret = SecretKey(private.p, private.q)
    if int(secret.public.n) != public.n:  # pragma: no cover - phe's own invariant
        raise RuntimeError("phe returned primes that do not multiply to n")
    meta = new_metadata(
        scheme=SCHEME_NAME,
        params={"key_bits": key_bits},
        fingerprint=fingerprint_of(public.n, key_bits),
        forced=bool(insecure),
    )
    bundle: PaillierClientBundle = PaillierClientBundle._wrap(
        secret,
        fingerprint=bytes.fromhex(meta["fingerprint"]),
        mac_key=bytes.fromhex(meta["mac_key"]),
        meta=meta,
    )
    write_key_set(
        out,
        client=bundle.serialize(include_secret_key=True),
        coordinator=bundle.serialize(include_secret_key=False),
    )
    logger.info(
        "created Paillier key set %s in %s (%d bits)", meta["fingerprint"][:16], out, key_bits
    )
    return bundle


__all__ = [
    "DEFAULT_KEY_BITS",
    "HARD_MIN_KEY_BITS",
    "MAX_KEY_BITS",
    "MIN_KEY_BITS",
    "PaillierClientBundle",
    "PaillierCoordinatorBundle",
    "create_paillier_keys",
    "describe",
    "fingerprint_of",
    "load_paillier_client_bundle",
    "load_paillier_coordinator_bundle",
]
