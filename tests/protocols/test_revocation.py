"""Certificate revocation lists in the tenant store, and OPC UA connections to a server whose certificate is revoked."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.audit.services import Actor
from apps.protocols.certificates import generate_certificate, import_certificate, import_crl
from apps.protocols.choices import OpcUaSecurityMode, OpcUaSecurityPolicy
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.models import CertificateRevocationList, Device, Point
from apps.protocols.opcua.security import RevokedServerCertificate
from tests.factories import DeviceFactory, SensorFactory
from tests.protocols.conftest import OPCUA_SERVER_URI, OpcUaTestServer

pytestmark = pytest.mark.slow

ACTOR = Actor.system_job("tests.revocation")
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ThermaCore test CA"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ThermaCore tests")])


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(name=CA_NAME):
    """Return (certificate, key) of a CA that may sign certificates and CRLs."""
    key = _rsa_key()
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def issue_server_certificate(ca, ca_key):
    """Return (certificate, key) of an OPC UA server application instance certificate issued by the CA."""
    key = _rsa_key()
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Revocable OPC UA server")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(OPCUA_SERVER_URI), x509.DNSName("localhost"),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def make_crl(ca, ca_key, revoked_serials=(), next_update_days=7):
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=next_update_days))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def pem(item):
    return item.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def revocable_server():
    """An OPC UA server with Sign and SignAndEncrypt whose certificate a test CA issued; ``ca``, ``ca_key`` and
    ``certificate`` are set on it."""
    ca, ca_key = make_ca()
    certificate, key = issue_server_certificate(ca, ca_key)
    server = OpcUaTestServer(certificate=(
        certificate.public_bytes(serialization.Encoding.DER),
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )).start()
    server.ca, server.ca_key, server.certificate_x509 = ca, ca_key, certificate
    yield server
    server.stop()


def secure_device(server, ca_certificate):
    """Return a Sign device that trusts only the CA, with one point, loaded as the gateway loads it."""
    client = generate_certificate(f"Client for {server.port}", common_name="ThermaCore", actor=ACTOR)
    device = DeviceFactory(
        protocol="opcua", port=server.port, endpoint_path=server.endpoint_path, timeout=5.0,
        opcua_security_mode=OpcUaSecurityMode.SIGN, opcua_security_policy=OpcUaSecurityPolicy.BASIC256SHA256,
        client_certificate=client,
    )
    device.trusted_certificates.add(ca_certificate)
    point = Point.objects.create(
        device=device, sensor=SensorFactory(), node_id=server.node_id("Boiler1.SupplyTemp"), address=None
    )
    return Device.objects.with_certificates().get(pk=device.pk), point


async def connect_and_read(driver, point):
    async with driver:
        return await driver.read([point])


def test_import_crl_stores_issuer_and_next_update(alpha):
    ca, ca_key = make_ca()
    stored_ca = import_certificate("Test CA", pem(ca), actor=ACTOR)
    crl = make_crl(ca, ca_key, revoked_serials=[11, 12], next_update_days=7)

    stored = import_crl("Test CA CRL", pem(crl), actor=ACTOR)

    assert stored.issuer_certificate == stored_ca
    assert stored.issuer == ca.subject.rfc4514_string()
    assert stored.revoked_count == 2
    assert stored.next_update == crl.next_update_utc
    assert stored.this_update == crl.last_update_utc
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECT_CREATED).latest("pk")
    assert entry.object_id == str(stored.pk)


def test_import_crl_reads_der(alpha):
    ca, ca_key = make_ca()
    import_certificate("Test CA", pem(ca), actor=ACTOR)
    crl = make_crl(ca, ca_key, revoked_serials=[5])

    stored = import_crl("DER CRL", crl.public_bytes(serialization.Encoding.DER), actor=ACTOR)

    assert stored.revoked_count == 1
    assert stored.crl_pem.startswith("-----BEGIN X509 CRL-----")


def test_import_crl_rejects_unknown_issuer(alpha):
    ca, ca_key = make_ca()

    with pytest.raises(ValidationError) as caught:
        import_crl("Orphan CRL", pem(make_crl(ca, ca_key)), actor=ACTOR)

    message = " ".join(caught.value.messages)
    assert "No stored certificate is the CRL's issuer" in message
    assert "ThermaCore test CA" in message
    assert not CertificateRevocationList.objects.exists()


def test_import_crl_rejects_forged_signature(alpha):
    ca, _ca_key = make_ca()
    import_certificate("Test CA", pem(ca), actor=ACTOR)
    impostor, impostor_key = make_ca()

    with pytest.raises(ValidationError) as caught:
        import_crl("Forged CRL", pem(make_crl(impostor, impostor_key)), actor=ACTOR)

    assert "is not signed by the stored certificate" in " ".join(caught.value.messages)


def test_import_crl_rejects_invalid_text(alpha):
    with pytest.raises(ValidationError, match="Not a PEM or DER CRL"):
        import_crl("Garbage", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", actor=ACTOR)


def test_server_of_trusted_ca_connects_without_crl(alpha, revocable_server):
    stored_ca = import_certificate("Test CA", pem(revocable_server.ca), actor=ACTOR)
    device, point = secure_device(revocable_server, stored_ca)

    [sample] = asyncio.run(connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    assert sample.value == 70.0


def test_crl_without_server_serial_admits_server(alpha, revocable_server):
    stored_ca = import_certificate("Test CA", pem(revocable_server.ca), actor=ACTOR)
    other_serial = revocable_server.certificate_x509.serial_number + 1
    import_crl("CA CRL", pem(make_crl(revocable_server.ca, revocable_server.ca_key, [other_serial])), actor=ACTOR)
    device, point = secure_device(revocable_server, stored_ca)

    [sample] = asyncio.run(connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    assert sample.value == 70.0


def test_revoked_server_certificate_is_rejected(alpha, revocable_server):
    stored_ca = import_certificate("Test CA", pem(revocable_server.ca), actor=ACTOR)
    serial = revocable_server.certificate_x509.serial_number
    import_crl("CA CRL", pem(make_crl(revocable_server.ca, revocable_server.ca_key, [serial])), actor=ACTOR)
    device, point = secure_device(revocable_server, stored_ca)

    with pytest.raises(RevokedServerCertificate) as caught:
        asyncio.run(connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    message = str(caught.value)
    assert f"serial number {serial:x} was revoked" in message
    assert "CRL 'CA CRL'" in message
    assert "keyCompromise" in message
    assert "BadCertificateRevoked" in message
    assert "Revocable OPC UA server" in message


def test_crl_of_other_issuer_does_not_revoke(alpha, revocable_server):
    stored_ca = import_certificate("Test CA", pem(revocable_server.ca), actor=ACTOR)
    other_ca, other_key = make_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other CA")]))
    stored_other = import_certificate("Other CA", pem(other_ca), actor=ACTOR)
    # Serial numbers are unique per issuer only, so another CA's CRL with the same serial must not count.
    serial = revocable_server.certificate_x509.serial_number
    import_crl("Other CRL", pem(make_crl(other_ca, other_key, [serial])), actor=ACTOR)
    device, point = secure_device(revocable_server, stored_ca)
    device.trusted_certificates.add(stored_other)
    device = Device.objects.with_certificates().get(pk=device.pk)

    [sample] = asyncio.run(connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    assert sample.value == 70.0


def test_admin_uploads_crl_and_lists_next_update(alpha_client):
    ca, ca_key = make_ca()
    import_certificate("Test CA", pem(ca), actor=ACTOR)
    upload = SimpleUploadedFile("ca.crl", pem(make_crl(ca, ca_key, [7], next_update_days=3)).encode())

    response = alpha_client.post(
        "/admin/protocols/certificaterevocationlist/add/", {"name": "Uploaded CRL", "crl_file": upload}
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    listing = alpha_client.get("/admin/protocols/certificaterevocationlist/").content.decode()
    assert "Uploaded CRL" in listing
    assert "ThermaCore test CA" in listing
    assert "next update in 2 days" in listing or "next update in 3 days" in listing


def test_admin_rejects_crl_of_unknown_issuer(alpha_client):
    ca, ca_key = make_ca()
    upload = SimpleUploadedFile("ca.crl", pem(make_crl(ca, ca_key)).encode())

    response = alpha_client.post(
        "/admin/protocols/certificaterevocationlist/add/", {"name": "Orphan", "crl_file": upload}
    )

    assert response.status_code == 200
    assert "import that CA certificate under Certificates first" in response.content.decode()
    assert not CertificateRevocationList.objects.exists()
