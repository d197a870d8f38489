"""Where a device may connect: host addresses, TLS file paths, and which certificates may sign a CRL."""

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from django.core.exceptions import ValidationError

from apps.audit.services import Actor
from apps.protocols.certificates import import_certificate, import_crl, load_crl
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.modbus.pool import ConnectFailed, ModbusConnectionPool
from apps.protocols.models import CertificateRevocationList, Device
from apps.protocols.sessions import make_driver
from apps.protocols.validators import ForbiddenHostError, check_resolved_host, resolve_tls_file, validate_host
from tests.factories import DeviceFactory
from tests.protocols.test_revocation import _rsa_key, make_ca, make_crl, pem

ACTOR = Actor.system_job("tests.device_targets")

FORBIDDEN_HOSTS = [
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
]
ALLOWED_HOSTS = ["10.0.0.5", "172.16.3.4", "192.168.1.20", "127.0.0.1", "::1", "fd00::12", "plc1.example.net"]


@pytest.mark.parametrize(("host", "kind"), FORBIDDEN_HOSTS)
def test_validate_host_rejects_address(host, kind):
    with pytest.raises(ValidationError) as caught:
        validate_host(host)

    message = caught.value.messages[0]
    assert repr(host) in message
    assert kind in message


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_validate_host_allows_plant_address(host):
    validate_host(host)


@pytest.mark.parametrize("protocol", ["modbus_tcp", "mqtt", "opcua", "dnp3"])
def test_device_metadata_host_rejected(alpha, protocol):
    device = DeviceFactory.build(protocol=protocol, host="169.254.169.254")

    with pytest.raises(ValidationError) as caught:
        device.full_clean()

    assert "host" in caught.value.message_dict
    assert "'169.254.169.254'" in caught.value.message_dict["host"][0]


@pytest.mark.parametrize(("host", "kind"), FORBIDDEN_HOSTS[:6])
def test_api_device_forbidden_host(alpha_api, host, kind):
    body = {"name": "Metadata", "host": host, "port": 502, "unit_id": 1}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 400
    assert kind in str(response.data["host"])
    assert not Device.objects.filter(name="Metadata").exists()


@pytest.mark.parametrize("host", ["169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1"])
def test_resolved_host_forbidden(host):
    with pytest.raises(ForbiddenHostError) as caught:
        check_resolved_host(host, 502)

    assert repr(host) in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "192.168.1.20"])
def test_resolved_host_allowed(host):
    check_resolved_host(host, 502)


# TLS file paths -------------------------------------------------------------


def tls_files(directory):
    allowed = directory / "allowed"
    allowed.mkdir()
    (allowed / "ca.pem").write_text("not read by these checks\n")
    outside = directory / "outside"
    outside.mkdir()
    (outside / "other-tenant.key").write_text("secret\n")
    return allowed, outside


@pytest.mark.parametrize("field", ["tls_ca_file", "tls_cert_file", "tls_key_file"])
@pytest.mark.parametrize("path", ["/etc/shadow", "/proc/self/environ", "ca.pem"])
def test_tls_file_rejected_without_directory(settings, field, path):
    settings.THERMACORE_TLS_FILES_DIR = ""

    with pytest.raises(ValidationError) as caught:
        resolve_tls_file(field, path)

    message = caught.value.message_dict[field][0]
    assert repr(path) in message
    assert "certificate store" in message


def test_tls_file_inside_directory_allowed(settings, tmp_path):
    allowed, _outside = tls_files(tmp_path)
    settings.THERMACORE_TLS_FILES_DIR = str(allowed)

    assert resolve_tls_file("tls_ca_file", "ca.pem") == os.path.realpath(allowed / "ca.pem")
    assert resolve_tls_file("tls_ca_file", str(allowed / "ca.pem")) == os.path.realpath(allowed / "ca.pem")


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "../outside/other-tenant.key", "sub/../../outside/other-tenant.key", "link.key"]
)
def test_tls_file_escape_rejected(settings, tmp_path, path):
    allowed, outside = tls_files(tmp_path)
    (allowed / "link.key").symlink_to(outside / "other-tenant.key")
    settings.THERMACORE_TLS_FILES_DIR = str(allowed)

    with pytest.raises(ValidationError) as caught:
        resolve_tls_file("tls_key_file", path)

    message = caught.value.message_dict["tls_key_file"][0]
    assert repr(path) in message
    assert "outside the TLS files directory" in message


def test_tls_directory_prefix_not_enough(settings, tmp_path):
    allowed, _outside = tls_files(tmp_path)
    sibling = tmp_path / "allowed-other"
    sibling.mkdir()
    settings.THERMACORE_TLS_FILES_DIR = str(allowed)

    with pytest.raises(ValidationError):
        resolve_tls_file("tls_ca_file", str(sibling / "ca.pem"))


def test_device_clean_rejects_tls_paths(alpha, settings):
    settings.THERMACORE_TLS_FILES_DIR = ""
    device = DeviceFactory.build(
        protocol="mqtt", tls_ca_file="/etc/shadow", tls_cert_file="/proc/self/environ", tls_key_file="/etc/ssl/k.pem"
    )

    with pytest.raises(ValidationError) as caught:
        device.full_clean()

    errors = caught.value.message_dict
    assert "'/etc/shadow'" in errors["tls_ca_file"][0]
    assert "'/proc/self/environ'" in errors["tls_cert_file"][0]
    assert "'/etc/ssl/k.pem'" in errors["tls_key_file"][0]


def test_api_device_tls_path_rejected(alpha_api, settings):
    settings.THERMACORE_TLS_FILES_DIR = ""
    body = {"name": "Broker", "protocol": "mqtt", "host": "127.0.0.1", "port": 8883, "tls_ca_file": "/etc/shadow"}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 400
    assert "certificate store" in str(response.data["tls_ca_file"])
    assert not Device.objects.filter(name="Broker").exists()


def test_api_device_tls_path_inside_allowed(alpha_api, settings, tmp_path):
    allowed, _outside = tls_files(tmp_path)
    settings.THERMACORE_TLS_FILES_DIR = str(allowed)
    body = {"name": "Broker", "protocol": "mqtt", "host": "127.0.0.1", "port": 8883, "tls_ca_file": "ca.pem"}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 201, response.data


def test_connect_rechecks_tls_path(alpha, settings, tmp_path):
    allowed, outside = tls_files(tmp_path)
    settings.THERMACORE_TLS_FILES_DIR = str(allowed)
    link = allowed / "ca.pem"
    device = Device.objects.create(name="Broker", protocol="mqtt", host="127.0.0.1", port=1, tls_ca_file="ca.pem")
    device.full_clean()
    # The file is swapped for a link out of the directory after the device was saved.
    link.unlink()
    link.symlink_to(outside / "other-tenant.key")
    device = Device.objects.with_certificates().get(pk=device.pk)

    with pytest.raises(DeviceUnreachable, match="outside the TLS files directory") as caught:
        asyncio.run(MqttDriver(device, schema="alpha").connect())

    assert "secret" not in str(caught.value)


def test_connect_rejects_tls_path_without_directory(alpha, settings):
    settings.THERMACORE_TLS_FILES_DIR = ""
    device = Device.objects.create(name="Old broker", protocol="mqtt", host="127.0.0.1", port=1,
                                   tls_ca_file="/etc/shadow")
    device = Device.objects.with_certificates().get(pk=device.pk)

    with pytest.raises(DeviceUnreachable, match="are rejected: tls_ca_file '/etc/shadow' is not allowed"):
        asyncio.run(MqttDriver(device, schema="alpha").connect())


@pytest.mark.parametrize("protocol", ["modbus_tcp", "mqtt", "opcua", "dnp3"])
def test_connect_rejects_forbidden_host(alpha, protocol):
    # Saved without clean(), as a row written before the check existed would be. The check must stop
    # the connect before any packet goes to the address.
    device = Device.objects.create(name=f"Metadata {protocol}", protocol=protocol, host="169.254.169.254", port=80)
    driver = make_driver(device)

    with pytest.raises(DeviceUnreachable, match="169.254.169.254.* resolves only to"):
        asyncio.run(driver.connect())


def test_pool_rejects_forbidden_host(alpha):
    device = Device.objects.create(name="Metadata pool", protocol="modbus_tcp", host="169.254.169.254", port=80)
    pool = ModbusConnectionPool()

    async def lease_once():
        async with pool.lease("alpha", device):
            pass

    with pytest.raises(ConnectFailed, match="169.254.169.254.* resolves only to"):
        asyncio.run(lease_once())


# CRL signers and unreadable CRL files ---------------------------------------


def make_signer(*, ca, crl_sign, with_key_usage=True):
    """Return (certificate, key) of a self-signed certificate with the given basic constraints and key usage."""
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Signer ca={ca} crl_sign={crl_sign}")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if with_key_usage:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=crl_sign, encipher_only=False, decipher_only=False,
        ), critical=True)
    return builder.sign(key, hashes.SHA256()), key


def test_crl_from_non_ca_rejected(alpha):
    signer, key = make_signer(ca=False, crl_sign=True)
    import_certificate("Leaf", pem(signer), actor=ACTOR)

    with pytest.raises(ValidationError) as caught:
        import_crl("Leaf CRL", pem(make_crl(signer, key)), actor=ACTOR)

    message = " ".join(caught.value.messages)
    assert "'Leaf'" in message
    assert "not a CA certificate" in message
    assert not CertificateRevocationList.objects.exists()


def test_crl_without_crl_sign_rejected(alpha):
    signer, key = make_signer(ca=True, crl_sign=False)
    import_certificate("CA without cRLSign", pem(signer), actor=ACTOR)

    with pytest.raises(ValidationError) as caught:
        import_crl("CRL", pem(make_crl(signer, key)), actor=ACTOR)

    assert "does not include cRLSign" in " ".join(caught.value.messages)
    assert not CertificateRevocationList.objects.exists()


def test_crl_from_ca_accepted(alpha):
    ca, key = make_ca()
    import_certificate("Test CA", pem(ca), actor=ACTOR)
    keyless, keyless_key = make_signer(ca=True, crl_sign=False, with_key_usage=False)
    import_certificate("CA without key usage", pem(keyless), actor=ACTOR)

    assert import_crl("CA CRL", pem(make_crl(ca, key)), actor=ACTOR).issuer_certificate.name == "Test CA"
    assert import_crl("Keyless CRL", pem(make_crl(keyless, keyless_key)), actor=ACTOR).pk is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\x03\x02\x01\x05", "neither a PEM block nor DER"),
        (b"just some text", "neither a PEM block nor DER"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "PEM block is not a valid X509 CRL"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM block is not a valid X509 CRL"),
        (b"  \n", "empty"),
    ],
)
def test_unreadable_crl_message(data, reason):
    with pytest.raises(ValidationError) as caught:
        load_crl(data)

    message = caught.value.message_dict["crl"][0]
    assert message.startswith("Not a PEM or DER CRL: ")
    assert reason in message
    assert "ParseError" not in message
    assert "UnexpectedTag" not in message
    assert "Upload the CRL file" in message
