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


def import_crl(name, data, *, actor):
    """Store a CRL after checking its signature against the issuing certificate in the store, and return it."""
    crl = load_crl(data)
    issuer_certificate = find_crl_issuer(crl)
    pem = crl.public_bytes(serialization.Encoding.PEM).decode()
    revocation_list = CertificateRevocationList(
        name=name,
        issuer_certificate=issuer_certificate,
        crl_pem=pem,
        issuer=crl.issuer.rfc4514_string(),
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked_count=len(crl),
        fingerprint_sha256=crl.fingerprint(hashes.SHA256()).hex(),
    )
    revocation_list.full_clean(exclude=["issuer_certificate"])
    with transaction.atomic():
        revocation_list.save()
        audit.record(AuditAction.OBJECT_CREATED, actor=actor, obj=revocation_list, after=snapshot(revocation_list))
    logger.info(
        "Schema %s: stored CRL %s of %s with %d revoked certificates, next update %s",
        connection.schema_name, revocation_list.pk, revocation_list.issuer, revocation_list.revoked_count,
        revocation_list.next_update,
    )
    if revocation_list.next_update is not None and revocation_list.next_update <= timezone.now():
        logger.warning(
            "Schema %s: CRL %s of %s was due for renewal on %s; upload the issuer's current CRL",
            connection.schema_name, revocation_list.pk, revocation_list.issuer, revocation_list.next_update.isoformat(),
        )
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
