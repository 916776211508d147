"""fedai certs: a CA, a server certificate for the given addresses, node auth keys."""

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedai.commands.certs import make_federation_certs, node_public_keys, parse_addresses
from fedai.errors import ConfigError


def test_server_certificate_is_signed_by_the_ca_for_every_address(tmp_path):
    # Act
    made = make_federation_certs(
        tmp_path / "c", addresses=["127.0.0.1", "link.example.org"], nodes=["a", "b"]
    )
    # Assert
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["link.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(made.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_node_keys_are_p384_openssh_with_private_files_0600(tmp_path):
    made = make_federation_certs(tmp_path / "c", addresses=["127.0.0.1"], nodes=["n1", "n2"])
    keys = node_public_keys(tmp_path / "c")
    assert sorted(keys) == ["n1", "n2"]
    for name, bundle in made.nodes.items():
        private = load_ssh_private_key((bundle / "node.key").read_bytes(), None)
        public = load_ssh_public_key(keys[name].read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        assert private.public_key() == public
        assert (bundle / "node.key").stat().st_mode & 0o777 == 0o600
        assert (bundle / "ca.crt").read_bytes() == made.ca_cert.read_bytes()
    for private in ("ca.key", "server.key"):
        assert (tmp_path / "c" / private).stat().st_mode & 0o777 == 0o600


def test_an_existing_ca_is_kept_unless_forced(tmp_path):
    make_federation_certs(tmp_path, addresses=["127.0.0.1"], nodes=["n"])
    first = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        make_federation_certs(tmp_path, addresses=["127.0.0.1"], nodes=["n"])
    assert (tmp_path / "ca.crt").read_bytes() == first
    make_federation_certs(tmp_path, addresses=["127.0.0.1"], nodes=["n"], overwrite=True)
    assert (tmp_path / "ca.crt").read_bytes() != first


@pytest.mark.parametrize("address", ["127.0.0.1:9093", "https://x.org", "", "a b"])
def test_bad_addresses_are_named(address):
    with pytest.raises(ConfigError, match="--address"):
        parse_addresses([address])


def test_bad_node_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="node names"):
        make_federation_certs(tmp_path, addresses=["127.0.0.1"], nodes=["../x"])
