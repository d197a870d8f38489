"""The tenant's certificate store: generate, import and encrypt client certificates, and raise alarms before they expire.

Private keys are stored encrypted with Fernet (AES-128-CBC and HMAC-SHA256). The key is
``settings.THERMACORE_CERT_KEY`` when that is set (a Fernet key, e.g. from
``Fernet.generate_key()``). Otherwise it is derived from ``SECRET_KEY`` with HKDF-SHA256. A
changed secret key therefore makes the stored private keys unreadable until the old one is back.
"""

import base64
import hashlib
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.audit.choices import AuditAction, SecurityTrigger
from apps.audit.monitoring import raise_security_alarm
from apps.audit.services import snapshot

from .crl_download import CrlDownloadError, download_crl, unsupported_scheme_reason
from .models import Certificate, CertificateRevocationList

logger = logging.getLogger(__name__)

# The Basic256Sha256 and Aes* OPC UA security policies allow RSA keys of 2048 to 4096 bits.
RSA_KEY_BITS = 2048
EXPIRY_WARNING_DAYS = 30
# The expiry check runs daily; two days keep the alarm active across one late or missed run.
EXPIRY_ALARM_WINDOW = timedelta(days=2)
_KDF_INFO = b"thermacore certificate private keys"


class CertificateKeyError(Exception):
    """A stored private key cannot be decrypted with the configured key."""


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    application_uri: str
    fingerprint_sha256: str
    not_valid_before: object
    not_valid_after: object


def _fernet():
    configured = getattr(settings, "THERMACORE_CERT_KEY", "")
    if configured:
        try:
            return Fernet(configured)
        except ValueError as exc:
            raise ImproperlyConfigured(
                "THERMACORE_CERT_KEY is invalid: it must be 32 url-safe base64-encoded bytes, "
                "as printed by python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'."
            ) from exc
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(settings.SECRET_KEY.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_private_key(private_key_pem):
    """Return the Fernet token (text) of a PEM private key."""
    return _fernet().encrypt(private_key_pem.encode()).decode()


def decrypt_private_key(token):
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CertificateKeyError(
            "The stored private key cannot be decrypted: THERMACORE_CERT_KEY or SECRET_KEY changed since it "
            "was stored. Restore the old key, or generate a new certificate."
        ) from exc


def load_certificate_pem(pem):
    """Parse one PEM certificate; raise ValidationError naming the problem when it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise ValidationError(
            {"certificate_pem": f"Not a PEM certificate ({exc}); paste the block from "
             "'-----BEGIN CERTIFICATE-----' to '-----END CERTIFICATE-----'."}
        ) from exc


def facts_of(certificate):
    """Return subject, application URI, SHA-256 fingerprint and validity of an x509.Certificate."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return CertificateFacts(
        subject=certificate.subject.rfc4514_string(),
        application_uri=uris[0] if uris else "",
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        not_valid_before=certificate.not_valid_before_utc,
        not_valid_after=certificate.not_valid_after_utc,
    )


def fingerprint_of_der(der):
    return hashlib.sha256(der).hexdigest()


def _checked_private_key(private_key_pem, certificate):
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            {"private_key_pem": f"Not an unencrypted PEM private key ({exc}); export the key without a passphrase."}
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError(
            {"private_key_pem": f"OPC UA security policies need an RSA key, not {type(key).__name__}."}
        )
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise ValidationError({"private_key_pem": "The private key does not belong to the certificate."})
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def redacted_snapshot(certificate):
    """Return the audit snapshot of a certificate without its encrypted private key."""
    values = snapshot(certificate)
    if values.get("private_key_encrypted"):
        values["private_key_encrypted"] = audit.REDACTED
    return values


def _save(certificate, *, actor):
    certificate.full_clean()
    with transaction.atomic():
        certificate.save()
        audit.record(AuditAction.OBJECT_CREATED, actor=actor, obj=certificate, after=redacted_snapshot(certificate))
    logger.info(
        "Schema %s: stored certificate %s (%s), valid until %s",
        connection.schema_name, certificate.pk, certificate.fingerprint_sha256, certificate.not_valid_after,
    )
    return certificate


def generate_certificate(name, *, common_name, application_uri="", days=365, actor):
    """Generate an RSA key pair and a self-signed OPC UA client certificate, store both and return the Certificate.

    The certificate carries the application URI (default ``urn:thermacore:<schema>:<name>``) and
    this host's name as subject alternative names, as OPC UA clients must.
    """
    if days < 1:
        raise ValidationError({"days": f"Validity of {days} days is invalid; give at least 1 day."})
    application_uri = application_uri or f"urn:thermacore:{connection.schema_name}:{name.replace(' ', '-')}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ThermaCore"),
    ])
    now = timezone.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(application_uri), x509.DNSName(socket.gethostname()),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True, data_encipherment=True,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return _save(
        Certificate(
            name=name,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_encrypted=encrypt_private_key(key_pem),
            **facts_of(certificate).__dict__,
        ),
        actor=actor,
    )


def parse_import(certificate_pem, private_key_pem=""):
    """Return the parsed certificate and the normalised PEM key ("" for none); raise ValidationError when invalid."""
    parsed = load_certificate_pem(certificate_pem)
    key_pem = _checked_private_key(private_key_pem, parsed) if private_key_pem.strip() else ""
    return parsed, key_pem


def import_certificate(name, certificate_pem, private_key_pem="", *, actor):
    """Store an uploaded PEM certificate, with its private key for a client certificate, and return it.

    Without a private key the certificate can only be trusted, e.g. an OPC UA server's certificate.
    """
    parsed, key_pem = parse_import(certificate_pem, private_key_pem)
    encrypted = encrypt_private_key(key_pem) if key_pem else ""
    return _save(
        Certificate(
            name=name,
            certificate_pem=parsed.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_encrypted=encrypted,
            **facts_of(parsed).__dict__,
        ),
        actor=actor,
    )


def load_crl(data):
    """Parse a CRL in PEM or DER form, or raise ValidationError naming the problem when it is not one."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if not raw.strip():
        raise ValidationError({"crl": "Not a PEM or DER CRL: the file is empty. Upload the CRL file that the CA published."})
    is_pem = raw.lstrip().startswith(b"-----BEGIN")
    try:
        if is_pem:
            return x509.load_pem_x509_crl(raw)
        return x509.load_der_x509_crl(raw)
    except ValueError as exc:
        # The parser's own text (e.g. "ParseError { kind: UnexpectedTag ... }") means nothing to users, so it is logged.
        logger.info("Schema %s: rejected an uploaded CRL of %d bytes: %s", connection.schema_name, len(raw), exc)
        if is_pem:
            reason = "the PEM block is not a valid X509 CRL (expected '-----BEGIN X509 CRL-----')"
        else:
            reason = f"the {len(raw)} bytes are neither a PEM block nor DER-encoded CRL data"
        raise ValidationError(
            {"crl": f"Not a PEM or DER CRL: {reason}. Upload the CRL file that the CA published."}
        ) from exc


def find_crl_issuer(crl):
    """Return the stored Certificate whose subject is the CRL's issuer and whose key verifies its signature."""
    issuer = crl.issuer.rfc4514_string()
    candidates = Certificate.objects.filter(subject=issuer)
    for candidate in candidates:
        parsed = load_certificate_pem(candidate.certificate_pem)
        if crl.is_signature_valid(parsed.public_key()):
            _check_crl_signer(candidate, parsed)
            return candidate
    if candidates:
        raise ValidationError({"crl": (
            f"The CRL of {issuer!r} is not signed by the stored certificate of that name; "
            "upload the CRL that this CA published, or import the CA certificate that signed it."
        )})
    raise ValidationError({"crl": (
        f"No stored certificate is the CRL's issuer {issuer!r}; import that CA certificate under "
        "Certificates first, then upload the CRL again."
    )})


def _check_crl_signer(candidate, parsed):
    """Raise ValidationError unless the certificate may sign CRLs (RFC 5280: a CA with cRLSign key usage)."""
    try:
        is_ca = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValidationError({"crl": (
            f"The CRL is signed by certificate {candidate.name!r}, which is not a CA certificate (its basic "
            "constraints do not say CA:TRUE), so its revocations cannot be trusted; upload the CRL of the CA "
            "that issued the certificates."
        )})
    try:
        key_usage = parsed.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.crl_sign:
        raise ValidationError({"crl": (
            f"The CRL is signed by certificate {candidate.name!r}, whose key usage does not include cRLSign, so "
            "it may not sign CRLs; upload a CRL signed by a CA key with the cRLSign key usage."
        )})


def _verified_crl(data):
    """Parse a PEM or DER CRL and return it with the stored CA certificate that signed it; raise ValidationError."""
    crl = load_crl(data)
    return crl, find_crl_issuer(crl)


def _crl_values(crl, issuer_certificate):
    """Return the CertificateRevocationList field values that describe ``crl``."""
    return {
        "issuer_certificate": issuer_certificate,
        "crl_pem": crl.public_bytes(serialization.Encoding.PEM).decode(),
        "issuer": crl.issuer.rfc4514_string(),
        "this_update": crl.last_update_utc,
        "next_update": crl.next_update_utc,
        "revoked_count": len(crl),
        "fingerprint_sha256": crl.fingerprint(hashes.SHA256()).hex(),
    }


def _log_stored_crl(revocation_list, *, action="stored"):
    logger.info(
        "Schema %s: %s CRL %s of %s with %d revoked certificates, next update %s",
        connection.schema_name, action, revocation_list.pk, revocation_list.issuer, revocation_list.revoked_count,
        revocation_list.next_update,
    )
    if revocation_list.next_update is not None and revocation_list.next_update <= timezone.now():
        logger.warning(
            "Schema %s: CRL %s of %s was due for renewal on %s; upload the issuer's current CRL",
            connection.schema_name, revocation_list.pk, revocation_list.issuer, revocation_list.next_update.isoformat(),
        )


def import_crl(name, data, *, actor):
    """Store a CRL after checking its signature against the issuing certificate in the store, and return it."""
    crl, issuer_certificate = _verified_crl(data)
    revocation_list = CertificateRevocationList(name=name, **_crl_values(crl, issuer_certificate))
    revocation_list.full_clean(exclude=["issuer_certificate"])
    with transaction.atomic():
        revocation_list.save()
        audit.record(AuditAction.OBJECT_CREATED, actor=actor, obj=revocation_list, after=snapshot(revocation_list))
    _log_stored_crl(revocation_list)
    return revocation_list


def warn_expiring_certificates(now=None):
    """Raise an alarm and log a warning for each certificate that expires within 30 days or has expired; return them.

    The daily task repeats the alarm while the certificate is still in the store, so it stays
    active. Once the certificate is renewed or deleted, the alarm returns to normal
    EXPIRY_ALARM_WINDOW after the last run that found it.
    """
    now = now or timezone.now()
    expiring = list(Certificate.objects.expiring_before(now + timedelta(days=EXPIRY_WARNING_DAYS)))
    for certificate in expiring:
        expires = certificate.not_valid_after.isoformat()
        if certificate.not_valid_after <= now:
            trigger = SecurityTrigger.CERTIFICATE_EXPIRED
            message = (
                f"Certificate {certificate.pk} ({certificate.name}) expired on {expires}; devices using it "
                "cannot connect securely. Renew it and update its devices."
            )
        else:
            trigger = SecurityTrigger.CERTIFICATE_EXPIRING
            message = (
                f"Certificate {certificate.pk} ({certificate.name}) expires on {expires}, in "
                f"{(certificate.not_valid_after - now).days} days. Renew it and update its devices."
            )
        logger.warning("Schema %s: %s", connection.schema_name, message)
        raise_security_alarm(
            trigger,
            subject=f"certificate={certificate.pk}",
            message=message,
            detail={"certificate": certificate.pk, "name": certificate.name, "not_valid_after": expires},
            window=EXPIRY_ALARM_WINDOW,
        )
    return expiring


# Fetching CRLs from distribution points -------------------------------------------------------

CRL_REFRESH_JOB = "protocols.refresh_crls"
# A fetched CRL is fetched again once a day, and on every run from one day before its next update.
CRL_REFETCH_INTERVAL = timedelta(days=1)
CRL_RENEWAL_MARGIN = timedelta(days=1)
MAX_DISTRIBUTION_POINT_LENGTH = CertificateRevocationList._meta.get_field("distribution_point").max_length


class CrlFetchStatus(StrEnum):
    STORED = "stored"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    OLDER = "older"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_DUE = "not_due"


@dataclass(frozen=True)
class CrlFetchOutcome:
    """The result of one distribution point URL in a refresh; ``crl_id`` is the stored CRL it concerns, if any."""

    url: str
    status: str
    message: str = ""
    crl_id: int | None = None


def _distribution_points(certificate):
    """Return the CRL distribution points of a parsed certificate, or an empty list when it names none."""
    try:
        return list(certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value)
    except x509.ExtensionNotFound:
        return []


def _expected_crl_issuer(point, certificate):
    """Return the subject (RFC 4514) of the CA whose CRL ``point`` serves: its cRLIssuer, or else the certificate's issuer."""
    for name in point.crl_issuer or ():
        if isinstance(name, x509.DirectoryName):
            return name.value.rfc4514_string()
    return certificate.issuer.rfc4514_string()


def collect_distribution_points():
    """Return ({URL: expected CRL issuer subject}, skip outcomes) for the distribution points of all stored certificates.

    A certificate's distribution point serves the CRL of its issuer, so a URL is kept only when
    that issuer is stored (a self-signed CA is its own issuer). URLs that are not http:// or
    https://, and points given by a relative name, are skipped with the reason.
    """
    stored_subjects = set(Certificate.objects.values_list("subject", flat=True))
    urls, skipped = {}, []
    for stored in Certificate.objects.order_by("pk"):
        parsed = load_certificate_pem(stored.certificate_pem)
        for point in _distribution_points(parsed):
            if point.full_name is None:
                skipped.append(CrlFetchOutcome(
                    "", CrlFetchStatus.SKIPPED,
                    f"certificate {stored.pk} ({stored.name}) names a distribution point by a relative name, "
                    "which has no URL to fetch",
                ))
                continue
            issuer = _expected_crl_issuer(point, parsed)
            for general_name in point.full_name:
                if not isinstance(general_name, x509.UniformResourceIdentifier):
                    continue
                url = general_name.value
                reason = unsupported_scheme_reason(url)
                if not reason and len(url) > MAX_DISTRIBUTION_POINT_LENGTH:
                    reason = f"the URL is longer than {MAX_DISTRIBUTION_POINT_LENGTH} characters, which the CRL record stores"
                if not reason and issuer not in stored_subjects:
                    reason = f"its CRL issuer {issuer!r} is not in the certificate store, so its signature cannot be checked"
                if reason:
                    skipped.append(CrlFetchOutcome(url, CrlFetchStatus.SKIPPED, f"certificate {stored.pk}: {reason}"))
                    continue
                urls.setdefault(url, issuer)
    return urls, skipped


def _is_due(stored, now):
    if stored is None or stored.fetched_at is None:
        return True
    if stored.next_update is None or stored.next_update <= now + CRL_RENEWAL_MARGIN:
        return True
    return stored.fetched_at <= now - CRL_REFETCH_INTERVAL


def _check_fetched_crl(crl, url, expected_issuer):
    issuer = crl.issuer.rfc4514_string()
    if issuer != expected_issuer:
        raise ValidationError({"crl": (
            f"The CRL at {url} is issued by {issuer!r}, but the certificates that name this distribution point "
            f"expect a CRL of {expected_issuer!r}; correct the CA's distribution point or upload the CRL by hand."
        )})
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        return
    raise ValidationError({"crl": (
        f"The CRL at {url} is a delta CRL, which lists only changes since a base CRL and is not applied on its "
        "own; point the certificates at the CA's full CRL."
    )})


def _unique_crl_name(issuer_certificate, url):
    base = f"{issuer_certificate.name} CRL from {url}"[:200]
    name, number = base, 1
    while CertificateRevocationList.objects.filter(name=name).exists():
        number += 1
        name = f"{base[:190]} ({number})"
    return name


def _store_fetched_crl(crl, issuer_certificate, url, stored, now):
    """Create the CRL record of ``url``, or replace the values of ``stored``, with an audit entry; return the record."""
    actor = audit.Actor.system_job(CRL_REFRESH_JOB)
    values = _crl_values(crl, issuer_certificate)
    with transaction.atomic():
        if stored is None:
            record = CertificateRevocationList(
                name=_unique_crl_name(issuer_certificate, url), distribution_point=url, fetched_at=now, **values
            )
            record.full_clean(exclude=["issuer_certificate"])
            record.save()
            audit.record(
                AuditAction.OBJECT_CREATED, actor=actor, obj=record, after=snapshot(record),
                detail={"distribution_point": url},
            )
            return record
        before = snapshot(stored)
        for field, value in values.items():
            setattr(stored, field, value)
        stored.fetched_at = now
        stored.full_clean(exclude=["issuer_certificate"])
        stored.save()
        audit.record(
            AuditAction.OBJECT_UPDATED, actor=actor, obj=stored, before=before, after=snapshot(stored),
            detail={"distribution_point": url},
        )
        return stored


def _refresh_crl(url, expected_issuer, stored, now):
    """Fetch one distribution point and store its CRL when it is valid and newer; return the outcome."""
    schema = connection.schema_name
    stored_note = f"keeping CRL {stored.pk}" if stored else "no CRL of it stored"
    try:
        data = download_crl(url)
        crl, issuer_certificate = _verified_crl(data)
        _check_fetched_crl(crl, url, expected_issuer)
    except CrlDownloadError as exc:
        logger.warning("Schema %s: CRL fetch from %s failed, %s: %s", schema, url, stored_note, exc)
        return CrlFetchOutcome(url, CrlFetchStatus.FAILED, str(exc), stored and stored.pk)
    except ValidationError as exc:
        message = " ".join(exc.messages)
        logger.warning("Schema %s: CRL fetched from %s is invalid, %s: %s", schema, url, stored_note, message)
        return CrlFetchOutcome(url, CrlFetchStatus.FAILED, message, stored and stored.pk)

    if stored is not None and crl.last_update_utc <= stored.this_update:
        CertificateRevocationList.objects.filter(pk=stored.pk).update(fetched_at=now)
        same = crl.fingerprint(hashes.SHA256()).hex() == stored.fingerprint_sha256
        status = CrlFetchStatus.UNCHANGED if same else CrlFetchStatus.OLDER
        message = (
            f"the CRL at {url} was issued {crl.last_update_utc.isoformat()}, not after the stored CRL {stored.pk} "
            f"of {stored.this_update.isoformat()}, which is kept"
        )
        logger.info("Schema %s: %s: %s", schema, status, message)
        return CrlFetchOutcome(url, status, message, stored.pk)

    fingerprint = crl.fingerprint(hashes.SHA256()).hex()
    duplicate = CertificateRevocationList.objects.filter(fingerprint_sha256=fingerprint).first()
    if duplicate is not None:
        # NOTE: the URL stays due, so it is fetched on every run until the CA publishes a newer CRL.
        message = f"the CRL at {url} is already stored as {duplicate.name!r} (CRL {duplicate.pk})"
        logger.info("Schema %s: %s", schema, message)
        return CrlFetchOutcome(url, CrlFetchStatus.UNCHANGED, message, duplicate.pk)

    record = _store_fetched_crl(crl, issuer_certificate, url, stored, now)
    _log_stored_crl(record, action="replaced" if stored else "stored fetched")
    status = CrlFetchStatus.REPLACED if stored else CrlFetchStatus.STORED
    return CrlFetchOutcome(url, status, f"fetched from {url}", record.pk)


def refresh_crls(now=None, *, force=False):
    """Fetch the due CRLs of the current tenant schema from the distribution points of stored certificates.

    A fetched CRL must pass the checks of an upload (signed by a stored CA with cRLSign), be
    issued by the CA that the distribution point serves and not be a delta CRL. It replaces
    the record of the same URL only when its thisUpdate is later. A failed fetch keeps the
    stored CRL. ``force`` fetches every URL, due or not. Return one CrlFetchOutcome per URL.
    """
    now = now or timezone.now()
    schema = connection.schema_name
    urls, outcomes = collect_distribution_points()
    logger.info("Schema %s: CRL refresh started, %d distribution point URLs", schema, len(urls))
    for outcome in outcomes:
        logger.info("Schema %s: skipped CRL distribution point %s: %s", schema, outcome.url or "-", outcome.message)
    for url, issuer in urls.items():
        stored = CertificateRevocationList.objects.filter(distribution_point=url, issuer=issuer).first()
        if not force and not _is_due(stored, now):
            outcomes.append(CrlFetchOutcome(url, CrlFetchStatus.NOT_DUE, "", stored.pk))
            continue
        outcomes.append(_refresh_crl(url, issuer, stored, now))
    counts = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    logger.info("Schema %s: CRL refresh finished: %s", schema, counts or "nothing to fetch")
    return outcomes
