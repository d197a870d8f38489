"""Fetching CRLs from the distribution points of stored certificates, from HTTP servers on 127.0.0.1."""

import asyncio
import http.server
import io
import logging
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.management import CommandError, call_command

from apps.audit.choices import ActorType, AuditAction
from apps.audit.models import AuditEntry
from apps.protocols import crl_download
from apps.protocols.certificates import CRL_REFRESH_JOB, CrlFetchStatus, import_certificate, refresh_crls
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.models import CertificateRevocationList
from apps.protocols.opcua.security import RevokedServerCertificate
from apps.protocols.tasks import refresh_crls_task
from apps.protocols.validators import check_resolved_host
from tests.protocols.conftest import OpcUaTestServer
from tests.protocols.pki import make_pki
from tests.protocols.test_revocation import (
    ACTOR,
    _rsa_key,
    connect_and_read,
    issue_server_certificate,
    pem,
    secure_device,
)

pytestmark = pytest.mark.slow

# Ports reserved for this module's HTTP servers, so parallel test runs on the machine do not collide.
HTTP_PORTS = range(24400, 24500)
LOGGER = "apps.protocols.certificates"


class CrlServer:
    """A threaded HTTP server on 127.0.0.1 that serves configured bodies by path and counts requests."""

    def __init__(self, *, address="127.0.0.1", tls_files=None):
        self.routes = {}
        self.hits = []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                served.hits.append(self.path)
                route = served.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                body, delay, send_length = route
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                if send_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    # Without a length, HTTP/1.0 ends the body when the connection closes.
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        for port in HTTP_PORTS:
            try:
                self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
                break
            except OSError:
                continue
        else:
            raise RuntimeError(f"No free port in {HTTP_PORTS.start}-{HTTP_PORTS.stop - 1} for the CRL server.")
        self.port = self.httpd.server_address[1]
        if tls_files:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_files)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path, body, *, delay=0.0, send_length=True):
        self.routes[path] = (body, delay, send_length)

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def crl_server():
    server = CrlServer()
    yield server
    server.stop()


def make_ca_with_cdp(urls, common_name="Fetched CRL test CA", issuer=None):
    """Return (certificate, key) of a CA with cRLSign whose distribution points are ``urls``.

    ``issuer`` is the (certificate, key) of the CA that signs it; without one it is self-signed.
    """
    key = _rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
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
    )
    if urls:
        builder = builder.add_extension(x509.CRLDistributionPoints([
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None,
            )
            for url in urls
        ]), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def make_crl(ca, signing_key, revoked_serials=(), *, age=timedelta(minutes=1), next_update_days=7):
    """Return a CRL in the name of ``ca`` issued ``age`` ago, signed by ``signing_key``."""
    this_update = datetime.now(UTC) - age
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(this_update)
        .next_update(this_update + timedelta(days=next_update_days))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
        )
    return builder.sign(signing_key, hashes.SHA256())


def der(crl):
    return crl.public_bytes(serialization.Encoding.DER)


def outcome_of(outcomes, url):
    [outcome] = [outcome for outcome in outcomes if outcome.url == url]
    return outcome


def test_fetch_stores_crl_and_audit_entry(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    stored_ca = import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key, [41, 42])))

    outcome = outcome_of(refresh_crls(), url)

    assert outcome.status == CrlFetchStatus.STORED
    record = CertificateRevocationList.objects.get(pk=outcome.crl_id)
    assert record.distribution_point == url
    assert record.issuer_certificate == stored_ca
    assert record.revoked_count == 2
    assert record.fetched_at is not None
    assert record.crl_pem.startswith("-----BEGIN X509 CRL-----")
    entry = AuditEntry.objects.get(action=AuditAction.OBJECT_CREATED, object_id=str(record.pk),
                                   object_type="protocols.certificaterevocationlist")
    assert entry.actor_type == ActorType.SYSTEM_JOB
    assert entry.actor_id == CRL_REFRESH_JOB
    assert entry.detail == {"distribution_point": url}
    assert crl_server.hits == ["/ca.crl"]


def test_fetched_crl_not_due_again(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", pem(make_crl(ca, key)).encode())
    assert outcome_of(refresh_crls(), url).status == CrlFetchStatus.STORED

    later = outcome_of(refresh_crls(datetime.now(UTC) + timedelta(hours=1)), url)
    near_next_update = outcome_of(refresh_crls(datetime.now(UTC) + timedelta(days=6, hours=1)), url)

    assert later.status == CrlFetchStatus.NOT_DUE
    assert near_next_update.status == CrlFetchStatus.UNCHANGED
    assert crl_server.hits == ["/ca.crl", "/ca.crl"]


def test_crl_of_other_key_rejected(alpha, crl_server, caplog):
    url = crl_server.url("/ca.crl")
    ca, _key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, _rsa_key(), [7])))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        outcome = outcome_of(refresh_crls(), url)

    assert outcome.status == CrlFetchStatus.FAILED
    assert "is not signed by the stored certificate" in outcome.message
    assert not CertificateRevocationList.objects.exists()
    assert not AuditEntry.objects.filter(object_type="protocols.certificaterevocationlist").exists()
    [logged] = [record.getMessage() for record in caplog.records if url in record.getMessage()]
    assert "is invalid, no CRL of it stored" in logged
    assert "is not signed by the stored certificate" in logged


def test_older_crl_keeps_newer(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    newer = make_crl(ca, key, [1, 2], age=timedelta(minutes=1))
    crl_server.serve("/ca.crl", der(newer))
    stored = CertificateRevocationList.objects.get(pk=outcome_of(refresh_crls(), url).crl_id)

    crl_server.serve("/ca.crl", der(make_crl(ca, key, [1], age=timedelta(hours=2))))
    outcome = outcome_of(refresh_crls(force=True), url)

    assert outcome.status == CrlFetchStatus.OLDER
    kept = CertificateRevocationList.objects.get()
    assert kept.pk == stored.pk
    assert kept.fingerprint_sha256 == newer.fingerprint(hashes.SHA256()).hex()
    assert kept.revoked_count == 2


def test_newer_crl_replaces_record(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key, [1], age=timedelta(hours=2))))
    first = outcome_of(refresh_crls(), url)

    newer = make_crl(ca, key, [1, 2, 3])
    crl_server.serve("/ca.crl", der(newer))
    outcome = outcome_of(refresh_crls(force=True), url)

    assert outcome.status == CrlFetchStatus.REPLACED
    assert outcome.crl_id == first.crl_id
    record = CertificateRevocationList.objects.get()
    assert record.revoked_count == 3
    assert record.this_update == newer.last_update_utc
    update = AuditEntry.objects.get(action=AuditAction.OBJECT_UPDATED, object_id=str(record.pk))
    assert update.actor_id == CRL_REFRESH_JOB
    assert update.changes["revoked_count"] == [1, 3]


@pytest.mark.parametrize("failure", ["missing", "closed_port", "timeout", "too_large", "too_large_unannounced"])
def test_failed_fetch_keeps_stored_crl(alpha, crl_server, caplog, monkeypatch, failure):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    first = make_crl(ca, key, [5], age=timedelta(hours=1))
    crl_server.serve("/ca.crl", der(first))
    stored_id = outcome_of(refresh_crls(), url).crl_id
    monkeypatch.setattr(crl_download, "FETCH_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(crl_download, "MAX_CRL_BYTES", 2000)
    larger = der(make_crl(ca, key, range(1, 200)))
    assert len(larger) > 2000
    expected = {
        "missing": "returned HTTP 404",
        "closed_port": "failed",
        "timeout": "timed out after 0.5 s",
        "too_large": "declares",
        "too_large_unannounced": "more than the limit of 2000 bytes",
    }[failure]
    if failure == "missing":
        crl_server.routes.clear()
    elif failure == "closed_port":
        crl_server.stop()
    elif failure == "timeout":
        crl_server.serve("/ca.crl", der(make_crl(ca, key, [5, 6])), delay=2.0)
    else:
        crl_server.serve("/ca.crl", larger, send_length=failure == "too_large")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        outcome = outcome_of(refresh_crls(force=True), url)

    assert outcome.status == CrlFetchStatus.FAILED
    assert expected in outcome.message
    assert outcome.crl_id == stored_id
    kept = CertificateRevocationList.objects.get()
    assert kept.fingerprint_sha256 == first.fingerprint(hashes.SHA256()).hex()
    [logged] = [record.getMessage() for record in caplog.records if url in record.getMessage()]
    assert f"keeping CRL {stored_id}" in logged
    assert expected in logged


@pytest.mark.parametrize(("server_name", "expected"), [
    ("localhost", None),
    ("crl.other.test", "Hostname mismatch"),
])
def test_https_checks_host_name(alpha, tmp_path, monkeypatch, server_name, expected):
    pki = make_pki(tmp_path, server_names=(server_name,))
    # OpenSSL's default verify paths read SSL_CERT_FILE, so the test CA stands in for the system's trusted CAs.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.files["ca.pem"]))
    address = check_resolved_host("localhost", 443)
    server = CrlServer(address=address, tls_files=(pki.files["server.pem"], pki.files["server.key"]))
    try:
        url = f"https://localhost:{server.port}/ca.crl"
        ca, key = make_ca_with_cdp([url])
        import_certificate("Fetch CA", pem(ca), actor=ACTOR)
        server.serve("/ca.crl", der(make_crl(ca, key)))

        outcome = outcome_of(refresh_crls(), url)
    finally:
        server.stop()

    if expected is None:
        assert outcome.status == CrlFetchStatus.STORED
        assert server.hits == ["/ca.crl"]
    else:
        assert outcome.status == CrlFetchStatus.FAILED
        assert expected in outcome.message
        assert server.hits == []


@pytest.mark.parametrize(("host", "reason"), [
    ("169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("[::ffff:169.254.169.254]", "link-local"),
])
def test_forbidden_host_not_contacted(alpha, crl_server, host, reason):
    # On Linux a connection to 0.0.0.0 reaches 127.0.0.1, so the server would count a request that got through.
    url = f"http://{host}:{crl_server.port}/ca.crl"
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key)))

    outcome = outcome_of(refresh_crls(), url)

    assert outcome.status == CrlFetchStatus.FAILED
    assert reason in outcome.message
    assert "was not fetched" in outcome.message
    assert crl_server.hits == []
    assert not CertificateRevocationList.objects.exists()


def test_ldap_distribution_point_skipped(alpha, crl_server, caplog):
    ldap_url = "ldap://directory.example.net/cn=Fetch%20CA?certificateRevocationList"
    http_url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([ldap_url, http_url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key)))

    with caplog.at_level(logging.INFO, logger=LOGGER):
        outcomes = refresh_crls()

    skipped = outcome_of(outcomes, ldap_url)
    assert skipped.status == CrlFetchStatus.SKIPPED
    assert "scheme 'ldap' is not fetched" in skipped.message
    assert outcome_of(outcomes, http_url).status == CrlFetchStatus.STORED
    [logged] = [record.getMessage() for record in caplog.records if ldap_url in record.getMessage()]
    assert "skipped CRL distribution point" in logged
    assert "scheme 'ldap' is not fetched" in logged


def test_issuer_not_stored_skipped(alpha, crl_server):
    # An intermediate CA's distribution point serves its root's CRL, which cannot be checked without the root.
    url = crl_server.url("/root.crl")
    root = make_ca_with_cdp([], common_name="Unstored root")
    intermediate, _key = make_ca_with_cdp([url], common_name="Stored intermediate", issuer=root)
    stored = import_certificate("Intermediate", pem(intermediate), actor=ACTOR)

    [outcome] = refresh_crls()

    assert outcome.status == CrlFetchStatus.SKIPPED
    assert outcome.url == url
    assert f"certificate {stored.pk}" in outcome.message
    assert "'CN=Unstored root' is not in the certificate store" in outcome.message
    assert crl_server.hits == []


def test_refresh_task_and_beat_entry(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key)))

    counts = refresh_crls_task.run()

    assert counts == {CrlFetchStatus.STORED: 1}
    entry = settings.CELERY_BEAT_SCHEDULE["refresh-crls"]
    assert entry["task"] == "protocols.refresh_crls"
    assert entry["schedule"] == 3600.0


def test_refresh_command_prints_outcomes(alpha, crl_server):
    url = crl_server.url("/ca.crl")
    ca, key = make_ca_with_cdp([url])
    import_certificate("Fetch CA", pem(ca), actor=ACTOR)
    crl_server.serve("/ca.crl", der(make_crl(ca, key)))
    output = io.StringIO()

    call_command("refresh_crls", "--schema", "alpha", stdout=output)
    call_command("refresh_crls", "--schema", "alpha", "--force", stdout=output)

    record = CertificateRevocationList.objects.get()
    lines = output.getvalue().splitlines()
    assert lines[0] == f"stored {url} (CRL {record.pk}): fetched from {url}"
    assert lines[1].startswith(f"unchanged {url} (CRL {record.pk}): ")
    assert crl_server.hits == ["/ca.crl", "/ca.crl"]
    with pytest.raises(CommandError, match="Tenant schema 'missing' does not exist"):
        call_command("refresh_crls", "--schema", "missing")


@pytest.fixture(scope="module")
def fetched_crl_pki():
    """A CA whose distribution point is on a loopback CRL server, and an OPC UA server with a certificate it issued."""
    crl_server = CrlServer()
    ca, ca_key = make_ca_with_cdp([crl_server.url("/opcua-ca.crl")], common_name="Fetched CRL OPC UA CA")
    certificate, key = issue_server_certificate(ca, ca_key)
    server = OpcUaTestServer(certificate=(
        certificate.public_bytes(serialization.Encoding.DER),
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )).start()
    server.ca, server.ca_key, server.certificate_x509, server.crl_server = ca, ca_key, certificate, crl_server
    yield server
    server.stop()
    crl_server.stop()


def test_fetched_crl_revokes_opcua_server(alpha, fetched_crl_pki):
    server = fetched_crl_pki
    stored_ca = import_certificate("Fetched CRL CA", pem(server.ca), actor=ACTOR)
    serial = server.certificate_x509.serial_number
    server.crl_server.serve("/opcua-ca.crl", der(make_crl(server.ca, server.ca_key, [serial])))
    [outcome] = refresh_crls()
    assert outcome.status == CrlFetchStatus.STORED
    record = CertificateRevocationList.objects.get(pk=outcome.crl_id)
    device, point = secure_device(server, stored_ca)

    with pytest.raises(RevokedServerCertificate) as caught:
        asyncio.run(connect_and_read(OpcUaDriver(device, schema="alpha"), point))

    message = str(caught.value)
    assert f"serial number {serial:x} was revoked" in message
    assert f"CRL {record.name!r}" in message
