"""CKKS key sets: a secret client bundle and a keyless coordinator bundle.

:func:`create_ckks_keys` generates one TenSEAL CKKS key set (Cheon, Kim, Kim & Song,
ASIACRYPT 2017) and writes it in the generic bundle format (:mod:`fedai.crypto.bundle`):

* ``client.bundle`` -- the full TenSEAL context **with the secret key** (and, for
  ``encryption="public-key"`` key sets, the public key).
  Every client of the federation holds it: clients encrypt, and decrypt the aggregate.
* ``coordinator.bundle`` -- a TenSEAL context with the encryption parameters only: no
  secret, public, relinearisation or Galois key (about 100 bytes). Adding ciphertexts
  needs no key at all, so the coordinator gets none (NVFlare's server context still
  carries relin keys; it does not need them for additions either).

Encryption is **symmetric** (secret-key) by default. Only clients ever encrypt, and every
client holds the secret key anyway, so a public key buys nothing here; dropping it makes
encryption about 2x faster and fresh ciphertexts about 10x less noisy (no ``u * pk`` term:
measured max error 800 vs 10,000 at the coefficient scale), and there is no public key to
leak (``encryption="public-key"`` keeps the textbook mode, and older bundles still load).
It is not an integrity guarantee: without any key, the coordinator can still add public
constants to the ciphertexts it receives, or craft a trivial (``c1 = 0``) ciphertext of a
value of its choice; the payload MAC, whose key it holds, does not stop it either.

Fingerprint: for symmetric key sets SHA-256 over a domain tag and the context's
serialization with the secret key (parameters + secret key: a one-way commitment to the
key, so a client bundle whose key was swapped is refused); for public-key sets SHA-256
over the parameters + public key.

Security parameters follow the HomomorphicEncryption.org standard for 128-bit classical
security (Albrecht et al., "Homomorphic Encryption Standard", 2018): the total
``coeff_modulus`` bit count must not exceed :data:`MAX_TOTAL_BITS_128` for the ring degree.
SEAL enforces the same table and refuses larger moduli even when forced.

Limitation (stated plainly): all clients share one secret key. A coordinator colluding
with one client can decrypt every other client's contribution.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

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
from fedai.errors import ConfigError, InsecureParametersError, KeyFileError

if TYPE_CHECKING:
    import tenseal as ts

logger = logging.getLogger(__name__)

SCHEME_NAME = "ckks"
#: HomomorphicEncryption.org standard, 128-bit classical security (SEAL ``he_std_parms``).
MAX_TOTAL_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
#: fedai's policy floor: 4096 slots per ciphertext (the packing the benchmarks assume).
MIN_POLY_MODULUS_DEGREE = 8192
_FINGERPRINT_DOMAIN = b"fedai/ckks-key-fingerprint/v1\x00"
_FINGERPRINT_DOMAIN_SK = b"fedai/ckks-key-fingerprint/secret-key/v2\x00"
Encryption = Literal["symmetric", "public-key"]
ENCRYPTIONS: tuple[str, ...] = ("symmetric", "public-key")


@dataclass(frozen=True, slots=True, kw_only=True)
class CkksParameters:
    """CKKS encryption parameters (public).

    Attributes:
        poly_modulus_degree: Ring degree N (a power of two); N/2 slots per ciphertext.
        coeff_mod_bit_sizes: Bit sizes of the coefficient-modulus primes. The last one is
            SEAL's special (key-switching) prime; the others form the data modulus.
        global_scale: Encoding scale Delta; values are stored as round(x * Delta).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 50, 60)
    global_scale: float = 2.0**40

    @property
    def slots(self) -> int:
        """Values per ciphertext, ``N / 2``."""
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        """Total coefficient-modulus bits (what the security table bounds)."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def magnitude_bits(self) -> float:
        """log2 of the largest |value| a fresh ciphertext can hold without wrapping.

        Decryption recovers ``x * Delta`` modulo the data modulus q (all primes but the
        special one), so ``|x| * Delta`` must stay below ``q / 2``; one more bit is kept
        as margin because each prime lies slightly below its nominal power of two.
        """
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        return data_bits - math.log2(self.global_scale) - 2

    def problems(self) -> list[str]:
        """Return every well-formedness problem (not security) of these parameters."""
        out: list[str] = []
        n = self.poly_modulus_degree
        if n < 1024 or n > 32768 or n & (n - 1):
            out.append(f"poly_modulus_degree must be a power of two in [1024, 32768]; got {n}")
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2:
            out.append(
                f"coeff_mod_bit_sizes must list >= 2 primes (data + special); got {list(bits)}"
            )
        if any(not 17 <= b <= 60 for b in bits):
            out.append(f"coeff_mod_bit_sizes must each be in [17, 60]; got {list(bits)}")
        scale = self.global_scale
        if not (math.isfinite(scale) and scale >= 2.0**20):
            out.append(f"global_scale must be >= 2**20; got {scale!r}")
        elif len(bits) >= 2 and self.magnitude_bits < 1:
            out.append(
                f"global_scale 2**{math.log2(scale):g} leaves no headroom below the "
                f"data modulus 2**{sum(bits[:-1])}; use a smaller scale or more primes"
            )
        return out

    def security_problems(self) -> list[str]:
        """Return why these parameters are below fedai's 128-bit profile (empty if fine)."""
        out: list[str] = []
        n = self.poly_modulus_degree
        limit = MAX_TOTAL_BITS_128.get(n)
        if limit is not None and self.total_bits > limit:
            out.append(
                f"total coeff_modulus bits must be <= {limit} for "
                f"poly_modulus_degree {n} (128-bit security); got {self.total_bits}"
            )
        if n < MIN_POLY_MODULUS_DEGREE:
            out.append(
                f"poly_modulus_degree must be >= {MIN_POLY_MODULUS_DEGREE} "
                f"(fedai's 128-bit profile with 4096 slots); got {n}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "global_scale": self.global_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CkksParameters:
        """Inverse of :meth:`to_dict`."""
        return cls(
            poly_modulus_degree=int(d["poly_modulus_degree"]),
            coeff_mod_bit_sizes=tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
            global_scale=float(d["global_scale"]),
        )


class _Bundle:
    """Shared parts of both bundles: a private TenSEAL context handle and public metadata."""

    kind: BundleKind

    def __init__(self) -> None:
        raise TypeError(
            f"build a {type(self).__name__} with create_keys() or a load_*() function, not directly"
        )

    _context: ts.Context
    _mac_key: bytes
    _fingerprint: bytes
    _params: CkksParameters
    _meta: dict[str, Any]

    @classmethod
    def _wrap(
        cls,
        context: ts.Context,
        *,
        params: CkksParameters,
        fingerprint: bytes,
        mac_key: bytes,
        meta: dict[str, Any],
    ) -> Self:
        obj = cls.__new__(cls)
        obj._context = context
        obj._params = params
        obj._fingerprint = fingerprint
        obj._mac_key = mac_key
        obj._meta = dict(meta)
        return obj

    @property
    def fingerprint(self) -> bytes:
        """32-byte key-set fingerprint (identical in both bundles of one key set)."""
        return self._fingerprint

    @property
    def params(self) -> CkksParameters:
        """The CKKS parameters."""
        return self._params

    @property
    def encryption(self) -> Encryption:
        """``"symmetric"`` (secret-key encryption) or ``"public-key"`` (older key sets)."""
        return _encryption_of(self._meta, Path("<bundle>"))

    def is_private(self) -> bool:
        """Return whether this bundle's context holds the secret key."""
        return bool(self._context.is_private())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fingerprint={self._fingerprint.hex()[:16]}, "
            f"N={self._params.poly_modulus_degree}, "
            f"bits={list(self._params.coeff_mod_bit_sizes)})"
        )


class CoordinatorBundle(_Bundle):
    """The coordinator's bundle: parameters only, never a secret (or any) key."""

    kind: BundleKind = "coordinator"

    def serialize(self) -> bytes:
        """Return the bundle file bytes."""
        return pack_bundle(self._meta, "coordinator", _keyless_bytes(self._context))


class ClientBundle(_Bundle):
    """A client's bundle: the full TenSEAL context, secret key included."""

    kind: BundleKind = "client"

    def serialize(self, include_secret_key: bool = False) -> bytes:
        """Return bundle file bytes; without the secret key that is the coordinator bundle.

        Args:
            include_secret_key: Write the client bundle (secret key included). Default
                False, as in TenSEAL: the safe default is the shareable form.
        """
        if not include_secret_key:
            return self.to_public().serialize()
        ctx_bytes = self._context.serialize(
            save_public_key=self.encryption == "public-key",
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return pack_bundle(self._meta, "client", ctx_bytes)

    def to_public(self) -> CoordinatorBundle:
        """Return the coordinator bundle of this key set (a keyless copy of the context)."""
        import tenseal as ts

        public = ts.context_from(_keyless_bytes(self._context), n_threads=1)
        _require_keyless(public, Path("<to_public>"))
        return CoordinatorBundle._wrap(
            public,
            params=self._params,
            fingerprint=self._fingerprint,
            mac_key=self._mac_key,
            meta=self._meta,
        )


def _keyless_bytes(context: ts.Context) -> bytes:
    return bytes(
        context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


def _require_keyless(context: ts.Context, path: Path) -> None:
    if context.is_private():
        raise KeyFileError(
            f"{path}: expected a coordinator context without a secret key; "
            "got one holding a secret key"
        )


def _fingerprint_of(context: ts.Context, encryption: Encryption) -> bytes:
    """The key-set fingerprint (a client context: it must hold its key material).

    Symmetric: SHA-256 over a domain tag and the parameters + secret key serialization
    (deterministic; a one-way commitment to the key). Public-key: SHA-256 over a domain
    tag and the parameters + public key serialization (format of the first key sets).
    """
    if encryption == "symmetric":
        material = context.serialize(
            save_public_key=False,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return hashlib.sha256(_FINGERPRINT_DOMAIN_SK + material).digest()
    public = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(_FINGERPRINT_DOMAIN + public).digest()


def _encryption_of(meta: dict[str, Any], path: Path) -> Encryption:
    """The bundle's encryption type; bundles written before the field are public-key."""
    value = meta.get("encryption", "public-key")
    if value == "symmetric":
        return "symmetric"
    if value == "public-key":
        return "public-key"
    raise KeyFileError(f"{path}: expected encryption 'symmetric' or 'public-key'; got {value!r}")


def _load(
    path: Path, kind: BundleKind, n_threads: int
) -> tuple[ts.Context, dict[str, Any], CkksParameters, bytes, bytes]:
    import tenseal as ts

    meta, ctx_bytes = read_bundle(path, kind=kind, scheme=SCHEME_NAME)
    fingerprint, mac_key = key_set_fields(meta, path)
    try:
        params = CkksParameters.from_dict(meta["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise KeyFileError(
            f"{path}: expected params, fingerprint and mac_key in the "
            f"metadata; got {type(err).__name__}: {err}"
        ) from err
    try:
        context = ts.context_from(ctx_bytes, n_threads=n_threads)
    except (ValueError, RuntimeError) as err:
        raise KeyFileError(f"{path}: expected a TenSEAL CKKS context; got {err}") from err
    if hashlib.sha256(_keyless_bytes(context)).hexdigest() != meta.get("params_sha256"):
        raise KeyFileError(
            f"{path}: expected the context parameters recorded at creation; got different ones"
        )
    return context, meta, params, fingerprint, mac_key


def load_client_bundle(path: str | os.PathLike[str], *, n_threads: int = 1) -> ClientBundle:
    """Load a CKKS client bundle (secret key included).

    Args:
        path: The bundle file, or the key directory holding ``client.bundle``.
        n_threads: TenSEAL worker threads (1: the thread pool crashed under PySyft and is
            slower on 2 cores here).

    Returns:
        The bundle.

    Raises:
        KeyFileError: The file is missing, not a CKKS client bundle, corrupted, has no
            secret key, or its key does not match its fingerprint.
    """
    p = resolve(path, CLIENT_BUNDLE)
    context, meta, params, fingerprint, mac_key = _load(p, "client", n_threads)
    if not context.is_private():
        raise KeyFileError(f"{p}: expected a client context holding the secret key; got none")
    encryption = _encryption_of(meta, p)
    actual = _fingerprint_of(context, encryption)
    if actual != fingerprint:
        which = "secret key" if encryption == "symmetric" else "public key"
        raise KeyFileError(
            f"{p}: expected the {which} to match fingerprint "
            f"{fingerprint.hex()[:16]}; got {actual.hex()[:16]}"
        )
    bundle: ClientBundle = ClientBundle._wrap(
        context, params=params, fingerprint=fingerprint, mac_key=mac_key, meta=meta
    )
    return bundle


def load_coordinator_bundle(
    path: str | os.PathLike[str], *, n_threads: int = 1
) -> CoordinatorBundle:
    """Load a CKKS coordinator bundle and prove it holds no secret key.

    Args:
        path: The bundle file, or the key directory holding ``coordinator.bundle``.
        n_threads: TenSEAL worker threads.

    Returns:
        The bundle; its context's ``is_private()`` is False (checked here).

    Raises:
        KeyFileError: The file is missing, not a CKKS coordinator bundle, corrupted, or
            its context holds a secret key.
    """
    p = resolve(path, COORDINATOR_BUNDLE)
    context, meta, params, fingerprint, mac_key = _load(p, "coordinator", n_threads)
    _require_keyless(context, p)
    bundle: CoordinatorBundle = CoordinatorBundle._wrap(
        context, params=params, fingerprint=fingerprint, mac_key=mac_key, meta=meta
    )
    return bundle


def describe(info: BundleInfo) -> dict[str, Any]:
    """The public description of a CKKS bundle for ``fedai keys show``.

    Raises:
        KeyFileError: The recorded parameters are malformed.
    """
    try:
        p = CkksParameters.from_dict(info.params)
    except (KeyError, TypeError, ValueError) as err:
        raise KeyFileError(f"{info.path}: expected CKKS params in the metadata; got {err}") from err
    encryption = _encryption_of({**info.extra}, info.path)
    secure = not p.security_problems()
    return {
        "encryption": encryption,
        "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
        "total_bits": p.total_bits,
        "max_total_bits_128": MAX_TOTAL_BITS_128.get(p.poly_modulus_degree),
        "scale_bits": math.log2(p.global_scale),
        "slots": p.slots,
        "secure_128": secure,
        "summary": (
            f"({encryption})  N={p.poly_modulus_degree}  bits={list(p.coeff_mod_bit_sizes)} "
            f"(total {p.total_bits}, <= {MAX_TOTAL_BITS_128.get(p.poly_modulus_degree)} for "
            f"128-bit)  scale=2^{math.log2(p.global_scale):g}  slots={p.slots}"
        ),
        "security": "128-bit profile" if secure else "BELOW 128-bit (forced)",
    }


def create_ckks_keys(
    out_dir: str | os.PathLike[str],
    *,
    poly_modulus_degree: int = 8192,
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 50, 60),
    global_scale: float = 2.0**40,
    encryption: Encryption = "symmetric",
    force: bool = False,
    overwrite: bool = False,
    n_threads: int = 1,
) -> ClientBundle:
    """Generate a CKKS key set and write ``client.bundle`` and ``coordinator.bundle``.

    Args:
        out_dir: Directory to write into; created with mode 0700 if missing (an existing
            directory keeps its mode).
        poly_modulus_degree: Ring degree N.
        coeff_mod_bit_sizes: Coefficient-modulus prime sizes (last = special prime).
        global_scale: CKKS encoding scale.
        encryption: ``"symmetric"`` (default: no public key; 2x faster, less noise) or
            ``"public-key"``.
        force: Accept parameters below fedai's 128-bit profile (N < 8192). The
            HE-standard bit table itself cannot be overridden: SEAL refuses it.
        overwrite: Replace an existing key set in ``out_dir``.
        n_threads: TenSEAL worker threads.

    Returns:
        The new client bundle.

    Raises:
        ConfigError: Malformed parameters.
        InsecureParametersError: Parameters below the 128-bit profile and not forced, or
            beyond the HE-standard table.
        KeyFileError: ``out_dir`` already holds a key set and ``overwrite`` is False, or it
            cannot be written.
    """
    import tenseal as ts

    if encryption not in ENCRYPTIONS:
        raise ConfigError(
            f"keys encryption must be 'symmetric' or 'public-key'; got {encryption!r}"
        )
    params = CkksParameters(
        poly_modulus_degree=int(poly_modulus_degree),
        coeff_mod_bit_sizes=tuple(int(b) for b in coeff_mod_bit_sizes),
        global_scale=float(global_scale),
    )
    problems = params.problems()
    if problems:
        raise ConfigError(problems)
    insecure = params.security_problems()
    table_limit = MAX_TOTAL_BITS_128.get(params.poly_modulus_degree, 0)
    if insecure and (not force or params.total_bits > table_limit):
        hint = (
            "SEAL refuses moduli beyond the table even when forced"
            if params.total_bits > table_limit
            else "pass force=True / --force to accept"
        )
        raise InsecureParametersError("; ".join(insecure) + f" ({hint})")
    if insecure:
        logger.warning(
            "creating CKKS keys below the 128-bit profile (forced): %s", "; ".join(insecure)
        )
    out = Path(out_dir)
    prepare_key_dir(out, overwrite=overwrite)
    try:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            n_threads=n_threads,
            encryption_type=(
                ts.ENCRYPTION_TYPE.SYMMETRIC
                if encryption == "symmetric"
                else ts.ENCRYPTION_TYPE.ASYMMETRIC
            ),
        )
    except ValueError as err:  # SEAL's own parameter / security check
        raise InsecureParametersError(
            f"SEAL rejected the parameters {params.to_dict()}: {err}"
        ) from err
    context.global_scale = params.global_scale
    meta = new_metadata(
        scheme=SCHEME_NAME,
        params=params.to_dict(),
        fingerprint=_fingerprint_of(context, encryption),
        forced=bool(insecure),
        encryption=encryption,
        params_sha256=hashlib.sha256(_keyless_bytes(context)).hexdigest(),
    )
    bundle: ClientBundle = ClientBundle._wrap(
        context,
        params=params,
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
        "created CKKS key set %s in %s (N=%d, bits=%s)",
        meta["fingerprint"][:16],
        out,
        params.poly_modulus_degree,
        list(params.coeff_mod_bit_sizes),
    )
    return bundle


__all__ = [
    "ENCRYPTIONS",
    "MAX_TOTAL_BITS_128",
    "MIN_POLY_MODULUS_DEGREE",
    "CkksParameters",
    "ClientBundle",
    "CoordinatorBundle",
    "Encryption",
    "create_ckks_keys",
    "describe",
    "load_client_bundle",
    "load_coordinator_bundle",
]
