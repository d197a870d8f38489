"""Throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1 and an RSA client certificate."""

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    """PEM texts, and the files written for servers that load them by path."""

    ca_pem: str
    server_pem: str
    server_key_pem: str
    client_pem: str
    client_key_pem: str
    files: dict


def make_pki(directory, *, server_names=("127.0.0.1",), ca_name="ThermaCore test CA"):
    """Issue the certificates, write them to ``directory`` (mode 0644) and return them.

    The client key is RSA 2048, as the tenant certificate store requires. ``server_names``
    become the server certificate's subject alternative names (IP addresses or DNS names).
    """
    now = datetime.now(timezone.utc)

    def issue(common_name, public_key, issuer, signing_key, *, ca=False, names=()):
        alternative_names = []
        for name in names:
            try:
                alternative_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative_names.append(x509.DNSName(name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if alternative_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    def pem(certificate):
        return certificate.public_bytes(serialization.Encoding.PEM).decode()

    def key_pem(key):
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = issue(ca_name, ca_key.public_key(), ca_subject, ca_key, ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = issue("ThermaCore test server", server_key.public_key(), ca_subject, ca_key, names=server_names)
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client = issue("ThermaCore test client", client_key.public_key(), ca_subject, ca_key)

    pki = Pki(pem(ca), pem(server), key_pem(server_key), pem(client), key_pem(client_key), {})
    for name, text in (("ca.pem", pki.ca_pem), ("server.pem", pki.server_pem), ("server.key", pki.server_key_pem)):
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
        pki.files[name] = path
    return pki
