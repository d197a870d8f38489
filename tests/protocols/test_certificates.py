"""The certificate store, its expiry warnings, and OPC UA Sign and SignAndEncrypt against an asyncua server."""

import asyncio
import logging
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from apps.alarms.choices import AlarmState, Priority
from apps.alarms.models import Alarm
from apps.alarms.timers import run_alarm_timers
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.audit.services import Actor
from apps.protocols.certificates import (
    EXPIRY_ALARM_WINDOW,
    CertificateKeyError,
    decrypt_private_key,
    generate_certificate,
    import_certificate,
    warn_expiring_certificates,
)
from apps.protocols.choices import OpcUaSecurityMode, OpcUaSecurityPolicy
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.models import Certificate, Device, Point
from apps.protocols.opcua.security import UntrustedServerCertificate
from apps.protocols.tasks import warn_expiring_certificates_task
from tests.conftest import admin_of
from tests.factories import DeviceFactory, SensorFactory
from tests.protocols.conftest import make_opcua_server_certificate

ACTOR = Actor.system_job("tests.certificates")


def _public_numbers(certificate):
    return x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).public_key().public_numbers()


# The store


def test_generated_certificate_has_encrypted_key(alpha):
    certificate = generate_certificate("Gateway client", common_name="ThermaCore gateway", days=90, actor=ACTOR)

    stored = Certificate.objects.get(pk=certificate.pk)
    key = serialization.load_pem_private_key(stored.private_key_pem().encode(), None)
    assert "BEGIN" not in stored.private_key_encrypted
    assert key.public_key().public_numbers() == _public_numbers(stored)
    assert stored.subject == "O=ThermaCore,CN=ThermaCore gateway"
    assert stored.application_uri == "urn:thermacore:alpha:Gateway-client"
    assert timedelta(days=89) < stored.not_valid_after - timezone.now() <= timedelta(days=90)
    assert len(stored.fingerprint_sha256) == 64


def test_generated_certificate_is_audited_without_key(alpha):
    certificate = generate_certificate("Audited", common_name="ThermaCore", actor=ACTOR)

    entry = AuditEntry.objects.get(action=AuditAction.OBJECT_CREATED, object_id=str(certificate.pk))
    assert entry.changes["private_key_encrypted"][1] == "[redacted]"
    assert entry.actor_name == "tests.certificates"


def test_configured_cert_key_encrypts_private_keys(alpha):
    key = Fernet.generate_key().decode()

    with override_settings(THERMACORE_CERT_KEY=key):
        certificate = generate_certificate("Own key", common_name="ThermaCore", actor=ACTOR)

    assert Fernet(key).decrypt(certificate.private_key_encrypted.encode()).startswith(b"-----BEGIN PRIVATE KEY")
    with pytest.raises(CertificateKeyError, match="THERMACORE_CERT_KEY or SECRET_KEY changed"):
        decrypt_private_key(certificate.private_key_encrypted)


def test_changed_secret_key_cannot_decrypt(alpha):
    certificate = generate_certificate("Old secret", common_name="ThermaCore", actor=ACTOR)

    with override_settings(SECRET_KEY="another-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"):
        with pytest.raises(CertificateKeyError, match="Restore the old key"):
            certificate.private_key_pem()


def test_import_trusted_certificate_without_key(alpha):
    pem, _der, _key = make_opcua_server_certificate()

    certificate = import_certificate("Server", pem, actor=ACTOR)

    assert not certificate.has_private_key
    assert certificate.application_uri == "urn:thermacore:test:server"
    with pytest.raises(ValueError, match="has no private key"):
        certificate.private_key_pem()


def test_import_rejects_key_of_other_certificate(alpha):
    pem, _der, _key = make_opcua_server_certificate()
    _other_pem, _other_der, other_key_der = make_opcua_server_certificate("Other")
    other_key_pem = serialization.load_der_private_key(other_key_der, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    with pytest.raises(ValidationError, match="does not belong to the certificate"):
        import_certificate("Mismatch", pem, other_key_pem, actor=ACTOR)
    assert not Certificate.objects.filter(name="Mismatch").exists()


def test_import_rejects_text_that_is_not_pem(alpha):
    with pytest.raises(ValidationError, match="Not a PEM certificate"):
        import_certificate("Garbage", "hello", actor=ACTOR)


def test_same_certificate_cannot_be_stored_twice(alpha):
    pem, _der, _key = make_opcua_server_certificate()
    import_certificate("First", pem, actor=ACTOR)

    with pytest.raises(ValidationError, match="(?i)fingerprint"):
        import_certificate("Second", pem, actor=ACTOR)


def test_expiry_warning_30_days_ahead(alpha, caplog):
    soon = generate_certificate("Soon", common_name="ThermaCore", days=20, actor=ACTOR)
    later = generate_certificate("Later", common_name="ThermaCore", days=31, actor=ACTOR)

    with caplog.at_level(logging.WARNING, logger="apps.protocols.certificates"):
        warned = warn_expiring_certificates()

    assert warned == [soon]
    assert f"Certificate {soon.pk} (Soon) expires on" in caplog.text
    assert "in 19 days" in caplog.text
    assert f"Certificate {later.pk} " not in caplog.text


def test_expiry_warning_for_expired_certificate(alpha, caplog):
    expired = generate_certificate("Expired", common_name="ThermaCore", days=1, actor=ACTOR)

    with caplog.at_level(logging.WARNING, logger="apps.protocols.certificates"):
        warned = warn_expiring_certificates(now=timezone.now() + timedelta(days=3))

    assert warned == [expired]
    assert f"Certificate {expired.pk} (Expired) expired on" in caplog.text


def test_expiring_certificate_raises_one_alarm(alpha):
    soon = generate_certificate("Soon", common_name="ThermaCore", days=20, actor=ACTOR)
    generate_certificate("Later", common_name="ThermaCore", days=31, actor=ACTOR)

    warn_expiring_certificates()
    warn_expiring_certificates()

    [alarm] = Alarm.objects.security()
    assert alarm.key == f"certificate_expiring:certificate={soon.pk}"
    assert alarm.priority == Priority.MEDIUM
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert "Renew it" in alarm.message


def test_expired_certificate_alarm_is_high(alpha):
    expired = generate_certificate("Expired", common_name="ThermaCore", days=1, actor=ACTOR)

    warn_expiring_certificates(now=timezone.now() + timedelta(days=3))

    [alarm] = Alarm.objects.security()
    assert alarm.key == f"certificate_expired:certificate={expired.pk}"
    assert alarm.priority == Priority.HIGH


def test_renewed_certificate_alarm_returns(alpha):
    soon = generate_certificate("Soon", common_name="ThermaCore", days=20, actor=ACTOR)
    warn_expiring_certificates()
    soon.delete()

    warn_expiring_certificates()
    run_alarm_timers(timezone.now() + EXPIRY_ALARM_WINDOW + timedelta(minutes=1))

    [alarm] = Alarm.objects.security()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.condition_active is False


def test_expiry_task_returns_warned_ids(alpha):
    soon = generate_certificate("Soon", common_name="ThermaCore", days=5, actor=ACTOR)

    assert warn_expiring_certificates_task() == [soon.pk]


def test_admin_lists_expiry_and_generates(alpha_client):
    alpha_client.force_login(admin_of("alpha"))
    generate_certificate("Listed", common_name="ThermaCore", days=10, actor=ACTOR)

    listing = alpha_client.get("/admin/protocols/certificate/")
    created = alpha_client.post(
        "/admin/protocols/certificate/add/", {"name": "From admin", "common_name": "ThermaCore", "days": 30}
    )

    assert listing.status_code == 200
    assert "expires in 9 days: renew it" in listing.content.decode()
    assert created.status_code == 302
    assert Certificate.objects.get(name="From admin").has_private_key


def test_admin_rejects_invalid_upload(alpha_client):
    alpha_client.force_login(admin_of("alpha"))

    response = alpha_client.post(
        "/admin/protocols/certificate/add/",
        {"name": "Bad", "days": 30, "certificate_file": SimpleUploadedFile("bad.pem", b"not a certificate")},
    )

    assert response.status_code == 200
    assert "Not a PEM certificate" in response.content.decode()
    assert not Certificate.objects.filter(name="Bad").exists()


# Device validation


def test_secure_mode_needs_client_certificate(alpha):
    device = Device(name="Secure", protocol="opcua", host="127.0.0.1", port=4840,
                    opcua_security_mode=OpcUaSecurityMode.SIGN)

    with pytest.raises(ValidationError) as caught:
        device.full_clean()

    assert "needs a client certificate" in str(caught.value.message_dict["client_certificate"])


def test_secure_mode_rejects_certificate_without_key(alpha):
    pem, _der, _key = make_opcua_server_certificate()
    trusted = import_certificate("Server only", pem, actor=ACTOR)
    device = Device(name="Secure", protocol="opcua", host="127.0.0.1", port=4840,
                    opcua_security_mode=OpcUaSecurityMode.SIGN, client_certificate=trusted)

    with pytest.raises(ValidationError) as caught:
        device.full_clean()

    assert "has no private key" in str(caught.value.message_dict["client_certificate"])


def test_security_mode_only_for_opcua(alpha):
    device = Device(name="Modbus", protocol="modbus_tcp", host="127.0.0.1", port=502,
                    opcua_security_mode=OpcUaSecurityMode.SIGN_AND_ENCRYPT)

    with pytest.raises(ValidationError) as caught:
        device.full_clean()

    assert "only applies to OPC UA" in str(caught.value.message_dict["opcua_security_mode"])


# OPC UA against a server with security policies


def _secure_device(server, mode, policy, *, trust_server=True):
    client = generate_certificate(f"Client {mode} {policy}", common_name="ThermaCore", actor=ACTOR)
    device = DeviceFactory(
        protocol="opcua", port=server.port, endpoint_path=server.endpoint_path, timeout=5.0,
        opcua_security_mode=mode, opcua_security_policy=policy, client_certificate=client,
    )
    if trust_server:
        device.trusted_certificates.add(import_certificate(f"Server for {device.pk}", server.certificate_pem, actor=ACTOR))
    point = Point.objects.create(
        device=device, sensor=SensorFactory(), node_id=server.node_id("Boiler1.SupplyTemp"), address=None
    )
    return Device.objects.with_certificates().get(pk=device.pk), point


async def _connect_and_read(driver, point):
    async with driver:
        return await driver.read([point])


@pytest.mark.parametrize("mode", [OpcUaSecurityMode.SIGN, OpcUaSecurityMode.SIGN_AND_ENCRYPT])
@pytest.mark.parametrize("policy", OpcUaSecurityPolicy.values)
def test_secure_connection_reads_value(alpha, secure_opcua_server, mode, policy):
    device, point = _secure_device(secure_opcua_server, mode, policy)
    driver = OpcUaDriver(device, schema="alpha")

    [sample] = asyncio.run(_connect_and_read(driver, point))

    assert sample.value == 70.0
    assert driver.point_errors == {}


def test_secure_connection_uses_requested_policy(alpha, secure_opcua_server):
    device, point = _secure_device(
        secure_opcua_server, OpcUaSecurityMode.SIGN_AND_ENCRYPT, OpcUaSecurityPolicy.AES256_SHA256_RSAPSS
    )
    driver = OpcUaDriver(device, schema="alpha")

    async def connect_and_inspect():
        async with driver:
            return driver.client.security_policy.URI, driver.client.security_policy.Mode

    uri, security_mode = asyncio.run(connect_and_inspect())

    assert uri == "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"
    assert security_mode.name == "SignAndEncrypt"


def test_untrusted_server_certificate_is_rejected(alpha, secure_opcua_server):
    device, point = _secure_device(
        secure_opcua_server, OpcUaSecurityMode.SIGN_AND_ENCRYPT, OpcUaSecurityPolicy.BASIC256SHA256,
        trust_server=False,
    )
    server_certificate = x509.load_pem_x509_certificate(secure_opcua_server.certificate_pem.encode())
    fingerprint = server_certificate.fingerprint(hashes.SHA256()).hex()

    with pytest.raises(UntrustedServerCertificate) as caught:
        asyncio.run(_connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    message = str(caught.value)
    assert f"device {device.pk} does not trust" in message
    assert fingerprint in message
    assert "BadCertificateUntrusted" in message
    assert "add it to the device's trusted certificates" in message


def test_other_trusted_certificate_does_not_admit_server(alpha, secure_opcua_server):
    device, point = _secure_device(
        secure_opcua_server, OpcUaSecurityMode.SIGN, OpcUaSecurityPolicy.BASIC256SHA256, trust_server=False
    )
    other_pem, _der, _key = make_opcua_server_certificate("Some other server")
    device.trusted_certificates.add(import_certificate("Other server", other_pem, actor=ACTOR))
    device = Device.objects.with_certificates().get(pk=device.pk)

    with pytest.raises(UntrustedServerCertificate):
        asyncio.run(_connect_and_read(OpcUaDriver(device, schema="alpha"), point))


def test_secure_mode_against_server_without_security(alpha, opcua_server):
    opcua_server.certificate_pem = make_opcua_server_certificate()[0]
    device, point = _secure_device(opcua_server, OpcUaSecurityMode.SIGN, OpcUaSecurityPolicy.BASIC256SHA256)

    with pytest.raises(DeviceUnreachable, match="No matching endpoints"):
        asyncio.run(_connect_and_read(OpcUaDriver(device, schema="alpha"), point))
