"""TLS and node-authentication material for a federation (``fedai certs``).

Makes what Flower's Deployment Engine needs for TLS and SuperNode authentication, with
the ``cryptography`` package (it comes with Flower), no ``openssl`` subprocess:

- a certificate authority: ``ca.crt`` (public) and ``ca.key`` (private, 0600);
- the SuperLink's server certificate ``server.pem`` / ``server.key`` (0600), signed by the
  CA, with every given address (IP or DNS name) in its subjectAltName: a SuperNode
  checks the address it dials against that list;
- one directory per node, ``nodes/<name>/``, the bundle handed to that organisation:
  ``ca.crt`` (to verify the SuperLink), ``node.key`` (ECDSA P-384 private key in OpenSSH
  format, 0600: Flower refuses ed25519 for SuperNode auth) and ``node.pub`` (the public
  key the coordinator registers with ``flwr supernode register``).

Private keys are written with mode 0600 before a byte of them is; key directories 0700.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedai.errors import ConfigError
from fedai.fileio import atomic_write, make_dir

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
NODES_DIR = "nodes"
NODE_KEY = "node.key"
NODE_PUB = "node.pub"
PRIVATE_MODE = 0o600
DIR_MODE = 0o700
VALID_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class FederationCerts:
    """Paths of what :func:`make_federation_certs` wrote."""

    root: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    nodes: dict[str, Path] = field(default_factory=dict)  # node name -> its bundle dir


def node_names(count: int, prefix: str = "node") -> list[str]:
    """``node-1`` .. ``node-<count>``."""
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def parse_addresses(addresses: list[str]) -> list[str]:
    """Validate SAN entries: IP addresses or DNS names (no ports, no schemes).

    Raises:
        ConfigError: an entry is neither (all problems at once).
    """
    problems = []
    for text in addresses:
        try:
            ipaddress.ip_address(text)
            continue
        except ValueError:
            pass
        labels = text.rstrip(".").split(".")
        if (
            not text
            or ":" in text
            or "/" in text
            or not all(
                re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label)
                for label in labels
            )
        ):
            problems.append(
                f"--address must be an IP address or a DNS name without port; got {text!r}"
            )
    if not addresses:
        problems.append("--address must be given at least once (the SuperLink's address)")
    if problems:
        raise ConfigError(problems)
    return addresses


def make_federation_certs(
    out: Path, *, addresses: list[str], nodes: list[str], overwrite: bool = False
) -> FederationCerts:
    """Write a CA, a server certificate for ``addresses`` and one auth key per node.

    Args:
        out: Directory to write into (created 0700 if missing).
        addresses: SuperLink addresses for the server certificate's subjectAltName.
        nodes: Node names (``[A-Za-z0-9._-]``, one directory each).
        overwrite: Replace an existing CA; otherwise refuse to touch one.

    Returns:
        The written paths.

    Raises:
        ConfigError: bad addresses or names, or ``out`` already holds a CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    parse_addresses(addresses)
    bad = [n for n in nodes if not _NAME.match(n)]
    if bad or len(set(nodes)) != len(nodes):
        raise ConfigError(
            f"node names must be unique and match {_NAME.pattern}; got {', '.join(nodes)}"
        )
    if (out / CA_KEY).exists() and not overwrite:
        raise ConfigError(
            f"{out / CA_KEY} already exists: a second CA would invalidate every certificate "
            "signed by the first (pass --force to replace it)"
        )
    make_dir(out, mode=DIR_MODE)
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedai federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for text in addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            sans.append(x509.DNSName(text))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(out / CA_KEY, pem_key(ca_key), mode=PRIVATE_MODE)
    atomic_write(out / CA_CERT, ca_pem, mode=0o644)
    atomic_write(out / SERVER_KEY, pem_key(server_key), mode=PRIVATE_MODE)
    atomic_write(
        out / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    written: dict[str, Path] = {}
    for name in nodes:
        node_dir = out / NODES_DIR / name
        make_dir(node_dir, mode=DIR_MODE)
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        atomic_write(node_dir / NODE_KEY, private, mode=PRIVATE_MODE)
        atomic_write(node_dir / NODE_PUB, public + f" {name}\n".encode(), mode=0o644)
        atomic_write(node_dir / CA_CERT, ca_pem, mode=0o644)
        written[name] = node_dir
    return FederationCerts(
        root=out,
        ca_cert=out / CA_CERT,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
        nodes=written,
    )


def node_public_keys(certs: Path) -> dict[str, Path]:
    """Node name -> public key file, for every ``nodes/<name>/node.pub`` under ``certs``."""
    root = certs / NODES_DIR
    if not root.is_dir():
        return {}
    return {
        p.parent.name: p for p in sorted(root.glob(f"*/{NODE_PUB}")) if _NAME.match(p.parent.name)
    }


__all__ = [
    "CA_CERT",
    "NODE_KEY",
    "NODE_PUB",
    "SERVER_CERT",
    "SERVER_KEY",
    "FederationCerts",
    "make_federation_certs",
    "node_names",
    "node_public_keys",
    "parse_addresses",
]
