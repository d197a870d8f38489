"""OPC UA message security for a client: the tenant's client certificate and the device's trust list.

The server certificate is checked by asyncua's CertificateValidator when the session is
created: it must be valid now and be one of the device's trusted certificates or be issued by
one of them. An empty trust list rejects every server, so a secure mode never trusts blindly.
Then the certificate is rejected when a stored CRL of its issuer lists its serial number.
asyncua's own CRL check is not used, because it matches serial numbers of any issuer.
"""

from dataclasses import dataclass
from datetime import datetime

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ..choices import OpcUaSecurityMode
from ..drivers.base import DeviceUnreachable

MESSAGE_SECURITY_MODES = {
    OpcUaSecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    OpcUaSecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
SERVER_CERTIFICATE_CHECKS = (
    CertificateValidatorOptions.TIME_RANGE
    | CertificateValidatorOptions.TRUSTED
    | CertificateValidatorOptions.PEER_SERVER
)


class UntrustedServerCertificate(DeviceUnreachable):
    """The server presented a certificate that the device's trust list does not contain."""


class RevokedServerCertificate(UntrustedServerCertificate):
    """The server presented a certificate that a stored CRL of its issuer revokes."""


@dataclass(frozen=True)
class Revocation:
    crl_name: str
    issuer: str
    serial_number: int
    revoked_at: datetime
    reason: str


class _TrustList(TrustStore):
    """A TrustStore over certificates held in memory instead of files in directories."""

    def __init__(self, certificates):
        super().__init__(trust_locations=[], crl_locations=[])
        self._certificates = certificates

    async def load_trust(self):
        self._trust_store = x509.verification.Store(self._certificates) if self._certificates else None


class ServerCertificateCheck:
    """An asyncua certificate validator that remembers the certificate it rejected, for the error message."""

    def __init__(self, trusted_pems, crls=()):
        self.trust_list = _TrustList([x509.load_pem_x509_certificate(pem.encode()) for pem in trusted_pems])
        self.validator = CertificateValidator(SERVER_CERTIFICATE_CHECKS, self.trust_list)
        # (name, parsed CRL) pairs; their signatures were checked when they were stored.
        self.crls = [(name, x509.load_pem_x509_crl(pem.encode())) for name, pem in crls]
        self.rejected = None
        self.revocation = None

    async def __call__(self, certificate, application_description):
        await self.trust_list.load()
        try:
            await self.validator.validate(certificate, application_description)
        except Exception:
            self.rejected = certificate
            raise
        self.revocation = self.find_revocation(certificate)
        if self.revocation is not None:
            self.rejected = certificate
            raise ServiceError(ua.StatusCodes.BadCertificateRevoked)

    def find_revocation(self, certificate):
        """Return the Revocation of ``certificate`` in a CRL of its issuer, or None when none lists it."""
        for name, crl in self.crls:
            if crl.issuer != certificate.issuer:
                continue
            revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if revoked is None:
                continue
            try:
                reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
            except x509.ExtensionNotFound:
                reason = "unspecified"
            return Revocation(name, crl.issuer.rfc4514_string(), certificate.serial_number,
                              revoked.revocation_date_utc, reason)
        return None

    def describe_revocation(self):
        revocation = self.revocation
        return (
            f"serial number {revocation.serial_number:x} was revoked on {revocation.revoked_at:%Y-%m-%d %H:%M} UTC "
            f"(reason: {revocation.reason}) by CRL {revocation.crl_name!r} of {revocation.issuer!r}"
        )

    def describe_rejected(self):
        certificate = self.rejected
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        return (
            f"subject {certificate.subject.rfc4514_string()!r}, SHA-256 fingerprint {fingerprint}, "
            f"valid {certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d}"
        )


def policy_class(policy):
    """Return the asyncua SecurityPolicy class of an OpcUaSecurityPolicy value."""
    return getattr(security_policies, f"SecurityPolicy{policy}")


async def apply_security(client, device):
    """Configure ``client`` for the device's security mode and policy; return the server certificate check or None.

    Expects ``device.client_certificate`` and ``device.trusted_certificates`` loaded beforehand
    (``Device.objects.with_certificates()``, which also loads their CRLs), because the event loop
    must not query the database.
    Listing the endpoints to find the server certificate opens a connection without security.
    """
    if device.opcua_security_mode == OpcUaSecurityMode.NONE:
        return None
    certificate = device.client_certificate
    client.application_uri = certificate.application_uri
    trusted_certificates = list(device.trusted_certificates.all())
    check = ServerCertificateCheck(
        [trusted.certificate_pem for trusted in trusted_certificates],
        [(crl.name, crl.crl_pem) for trusted in trusted_certificates for crl in trusted.revocation_lists.all()],
    )
    client.certificate_validator = check
    certificate_der = x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    # asyncua reads content given as bytes as DER.
    private_key_der = serialization.load_pem_private_key(certificate.private_key_pem().encode(), None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    await client.set_security(
        policy_class(device.opcua_security_policy),
        certificate=certificate_der,
        private_key=private_key_der,
        mode=MESSAGE_SECURITY_MODES[device.opcua_security_mode],
    )
    return check
