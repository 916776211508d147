"""The key-bundle file format, shared by every secure-aggregation scheme.

A key set is a directory holding two files:

* ``client.bundle`` -- the scheme's secret key material; every client holds it;
* ``coordinator.bundle`` -- public material only (parameters, and for schemes whose
  coordinator needs one, a public key); the coordinator holds it.

Both carry the key set's 32-byte *fingerprint* (which every encrypted payload repeats)
and the 32-byte payload-authentication key (:mod:`fedai.crypto.envelope`), so both are
written with mode 0600; a directory created for them gets mode 0700 whatever the umask.

File layout::

    b"FEDAIKEY" | metadata length (>I) | metadata (UTF-8 JSON object) | body

The metadata holds ``format`` (:data:`BUNDLE_FORMAT`), ``scheme``, ``kind`` (``client`` or
``coordinator``), ``fingerprint`` and ``mac_key`` (hex), ``params`` (the scheme's public
parameters), ``created``, ``forced`` (parameters below fedai's security floor were
accepted on request) and ``context_sha256``, the SHA-256 of the body (the name predates
schemes other than CKKS, whose body is a TenSEAL context; it is kept so existing key sets
load). What the body holds, and every other metadata field, belongs to the scheme: its
module parses and checks them (:mod:`fedai.crypto.ckks_keys`,
:mod:`fedai.crypto.paillier_keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fedai.errors import KeyFileError
from fedai.fileio import atomic_write, make_dir

CLIENT_BUNDLE = "client.bundle"
COORDINATOR_BUNDLE = "coordinator.bundle"
BUNDLE_MAGIC = b"FEDAIKEY"
BUNDLE_FORMAT = 1
MAC_KEY_BYTES = 32
FINGERPRINT_BYTES = 32
#: Mode of a key directory created here (owner only, whatever the umask).
KEY_DIR_MODE = 0o700
#: Mode of both bundle files (the coordinator's holds the payload-authentication key).
BUNDLE_MODE = 0o600
BundleKind = Literal["client", "coordinator"]

_LEN = struct.Struct(">I")
_MAX_META_BYTES = 1 << 20
_CHECKSUM = "context_sha256"


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleInfo:
    """What a bundle file says about itself (no key material), for ``fedai keys show``.

    Attributes:
        path: The file.
        kind: ``client`` or ``coordinator``.
        scheme: The scheme that wrote it.
        fingerprint: The key-set fingerprint (hex).
        created: Creation time (ISO 8601, UTC).
        forced: Parameters below fedai's floor were accepted on request.
        size_bytes: File size.
        mode: Permission bits.
        params: The scheme's public parameters, as recorded.
        extra: Other scheme-specific public metadata (never ``mac_key``).
    """

    path: Path
    kind: BundleKind
    scheme: str
    fingerprint: str
    created: str
    forced: bool
    size_bytes: int
    mode: int
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def new_metadata(
    *, scheme: str, params: Mapping[str, Any], fingerprint: bytes, forced: bool, **extra: Any
) -> dict[str, Any]:
    """Return the metadata of a new key set, with a fresh payload-authentication key.

    Args:
        scheme: The scheme's registry name.
        params: The scheme's public parameters (JSON-serialisable).
        fingerprint: The key-set fingerprint (32 bytes).
        forced: Whether parameters below the security floor were accepted on request.
        **extra: Further scheme-specific public fields.

    Returns:
        The metadata both bundles share (``kind`` and the checksum are added on write).
    """
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes; got {len(fingerprint)}")
    return {
        "format": BUNDLE_FORMAT,
        "scheme": scheme,
        "params": dict(params),
        "fingerprint": fingerprint.hex(),
        "mac_key": secrets.token_bytes(MAC_KEY_BYTES).hex(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "forced": bool(forced),
        **extra,
    }


def pack_bundle(meta: Mapping[str, Any], kind: BundleKind, body: bytes) -> bytes:
    """Return the file bytes of a bundle: ``meta`` with ``kind`` and the body's checksum."""
    full = dict(meta)
    full.update(kind=kind, **{_CHECKSUM: hashlib.sha256(body).hexdigest()})
    text = json.dumps(full, sort_keys=True).encode()
    return BUNDLE_MAGIC + _LEN.pack(len(text)) + text + body


def _read(path: Path, expected: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise KeyFileError(
            f"{path}: expected a readable {expected} bundle file; got "
            f"{type(err).__name__}: {err.strerror or err}"
        ) from err


def _split(path: Path, data: bytes) -> tuple[dict[str, Any], bytes]:
    head = len(BUNDLE_MAGIC) + _LEN.size
    if len(data) < head or not data.startswith(BUNDLE_MAGIC):
        raise KeyFileError(
            f"{path}: expected a fedai key bundle (starting {BUNDLE_MAGIC!r}); "
            f"got {data[:8]!r} ({len(data)} bytes)"
        )
    (n,) = _LEN.unpack_from(data, len(BUNDLE_MAGIC))
    if n > _MAX_META_BYTES or head + n > len(data):
        raise KeyFileError(
            f"{path}: expected {n} metadata bytes; got a truncated file ({len(data)} bytes)"
        )
    try:
        meta = json.loads(data[head : head + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise KeyFileError(f"{path}: expected JSON bundle metadata; got {err}") from err
    if not isinstance(meta, dict):
        raise KeyFileError(f"{path}: expected a JSON object as metadata; got {type(meta).__name__}")
    if meta.get("format") != BUNDLE_FORMAT:
        raise KeyFileError(
            f"{path}: expected bundle format {BUNDLE_FORMAT}; got {meta.get('format')!r}"
        )
    return meta, data[head + n :]


def read_bundle(
    path: Path, *, kind: BundleKind, scheme: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """Read and check a bundle file's frame: magic, metadata, format, scheme, kind, checksum.

    Args:
        path: The bundle file.
        kind: The kind it must be.
        scheme: The scheme it must belong to (None: any).

    Returns:
        The metadata and the body (the scheme parses the body).

    Raises:
        KeyFileError: The file is missing, unreadable, not a bundle, of another format,
            scheme or kind, or its body does not match its recorded checksum.
    """
    meta, body = _split(path, _read(path, kind))
    if scheme is not None and meta.get("scheme") != scheme:
        raise KeyFileError(f"{path}: expected scheme {scheme!r}; got {meta.get('scheme')!r}")
    if meta.get("kind") != kind:
        raise KeyFileError(f"{path}: expected a {kind} bundle; got kind {meta.get('kind')!r}")
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), str(meta.get(_CHECKSUM))):
        raise KeyFileError(
            f"{path}: expected the context bytes to match their recorded "
            "SHA-256; got a mismatch (file corrupted or truncated)"
        )
    return meta, body


def key_set_fields(meta: Mapping[str, Any], path: Path) -> tuple[bytes, bytes]:
    """Return the (fingerprint, mac_key) a bundle's metadata records, checked for size.

    Raises:
        KeyFileError: Either is missing, not hex, or not 32 bytes.
    """
    try:
        fingerprint = bytes.fromhex(meta["fingerprint"])
        mac_key = bytes.fromhex(meta["mac_key"])
    except (KeyError, TypeError, ValueError) as err:
        raise KeyFileError(
            f"{path}: expected params, fingerprint and mac_key in the "
            f"metadata; got {type(err).__name__}: {err}"
        ) from err
    if len(fingerprint) != FINGERPRINT_BYTES or len(mac_key) != MAC_KEY_BYTES:
        raise KeyFileError(
            f"{path}: expected a {FINGERPRINT_BYTES}-byte fingerprint and a {MAC_KEY_BYTES}-byte "
            f"mac_key; got {len(fingerprint)} and {len(mac_key)} bytes"
        )
    return fingerprint, mac_key


def resolve(path: str | os.PathLike[str], name: str) -> Path:
    """``path`` itself, or ``path / name`` when ``path`` is a directory."""
    p = Path(path)
    return p / name if p.is_dir() else p


def prepare_key_dir(out_dir: str | os.PathLike[str], *, overwrite: bool) -> tuple[Path, Path]:
    """Refuse to replace a key set silently; create the directory (0700) if missing.

    Call before generating keys, so a refusal costs nothing.

    Returns:
        The client and coordinator bundle paths.

    Raises:
        KeyFileError: ``out_dir`` holds a key set and ``overwrite`` is False, or it
            cannot be created.
    """
    out = Path(out_dir)
    targets = (out / CLIENT_BUNDLE, out / COORDINATOR_BUNDLE)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise KeyFileError(
            f"{existing[0]}: expected no existing key set in {out}; got one "
            "(pass overwrite=True / --overwrite to replace it; old "
            "ciphertexts become unreadable)"
        )
    try:
        make_dir(out, mode=KEY_DIR_MODE)
    except OSError as err:
        raise KeyFileError(f"{out}: expected a writable key directory; got {err}") from err
    return targets


def write_key_set(out_dir: str | os.PathLike[str], *, client: bytes, coordinator: bytes) -> None:
    """Write both bundle files atomically with mode 0600 (after :func:`prepare_key_dir`).

    Raises:
        KeyFileError: The files cannot be written.
    """
    out = Path(out_dir)
    try:
        atomic_write(out / CLIENT_BUNDLE, client, mode=BUNDLE_MODE)
        atomic_write(out / COORDINATOR_BUNDLE, coordinator, mode=BUNDLE_MODE)
    except OSError as err:
        raise KeyFileError(f"{out}: expected to write the key bundles; got {err}") from err


def read_bundle_info(path: str | os.PathLike[str]) -> BundleInfo:
    """Read a bundle's metadata without parsing key material (for ``fedai keys show``).

    Raises:
        KeyFileError: The file is not a well-formed bundle.
    """
    p = Path(path)
    kind: BundleKind = "client" if p.name == CLIENT_BUNDLE else "coordinator"
    meta, _ = read_bundle(p, kind=kind)
    params = meta.get("params")
    if not isinstance(params, dict):
        raise KeyFileError(f"{p}: expected params in the metadata; got {params!r}")
    st = p.stat()
    hidden = {"format", "scheme", "kind", "fingerprint", "mac_key", "params", "created", "forced"}
    return BundleInfo(
        path=p,
        kind=kind,
        scheme=str(meta.get("scheme", "")),
        fingerprint=str(meta.get("fingerprint", "")),
        created=str(meta.get("created", "")),
        forced=bool(meta.get("forced")),
        size_bytes=st.st_size,
        mode=st.st_mode & 0o777,
        params=dict(params),
        extra={k: v for k, v in meta.items() if k not in hidden and k != _CHECKSUM},
    )


def scheme_of_key_dir(key_dir: str | os.PathLike[str]) -> str:
    """The scheme of the key set in ``key_dir`` (read from a bundle's metadata only).

    Raises:
        KeyFileError: Neither bundle is a readable fedai bundle.
    """
    d = Path(key_dir)
    problems: list[str] = []
    for name in (CLIENT_BUNDLE, COORDINATOR_BUNDLE):
        path = d / name
        try:
            with path.open("rb") as fh:
                head = fh.read(len(BUNDLE_MAGIC) + _LEN.size)
                (n,) = _LEN.unpack_from(head, len(BUNDLE_MAGIC)) if len(head) == 12 else (0,)
                data = head + fh.read(min(n, _MAX_META_BYTES))
        except OSError as err:
            problems.append(f"{path}: {err.strerror or err}")
            continue
        try:
            meta, _ = _split(path, data)
        except KeyFileError as err:
            problems.append(str(err))
            continue
        scheme = meta.get("scheme")
        if isinstance(scheme, str) and scheme:
            return scheme
        problems.append(f"{path}: expected a scheme name in the metadata; got {scheme!r}")
    raise KeyFileError(
        f"{d}: expected a key set made by `fedai keys create`; got none ({'; '.join(problems)})"
    )


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_MAGIC",
    "BUNDLE_MODE",
    "CLIENT_BUNDLE",
    "COORDINATOR_BUNDLE",
    "FINGERPRINT_BYTES",
    "KEY_DIR_MODE",
    "MAC_KEY_BYTES",
    "BundleInfo",
    "BundleKind",
    "key_set_fields",
    "new_metadata",
    "pack_bundle",
    "prepare_key_dir",
    "read_bundle",
    "read_bundle_info",
    "resolve",
    "scheme_of_key_dir",
    "write_key_set",
]
