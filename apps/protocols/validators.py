import ipaddress
import os
import socket

from django.conf import settings
from django.core.exceptions import ValidationError

from apps.tenants.validators import HOST_NAME_PATTERN

IPV4_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# MQTT TLS file paths on the gateway host, allowed only inside THERMACORE_TLS_FILES_DIR.
TLS_FILE_FIELDS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def forbidden_address_reason(address):
    """Return why a device may not connect to ``address`` (an ipaddress object), or "" when it may.

    Link-local addresses include cloud metadata services such as 169.254.169.254. Private and
    loopback addresses stay allowed because plant networks use them.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return "a link-local address (169.254.0.0/16 or fe80::/10)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address == IPV4_BROADCAST:
        return "the broadcast address"
    return ""


def validate_host(value):
    """Accept an IPv4 or IPv6 address or a host name; reject URLs, ports, spaces and addresses no device has."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is not None:
        reason = forbidden_address_reason(address)
        if reason:
            raise ValidationError(
                "Host %(value)s is %(reason)s, which no device can use; give the device's own unicast address "
                "or host name, e.g. '192.168.1.20'.",
                params={"value": repr(value), "reason": reason},
            )
        return
    if not HOST_NAME_PATTERN.match(value):
        raise ValidationError(
            "%(value)s is not an IP address or host name; give only the host, e.g. '192.168.1.20' or "
            "'plc1.example.net', without scheme, port or path.",
            params={"value": repr(value)},
        )


class ForbiddenHostError(ValueError):
    """A device host name resolves only to addresses that no device may have."""


def check_resolved_host(host, port):
    """Resolve ``host`` and return the first address a device may have, as a string.

    Raise ForbiddenHostError when every address of ``host`` is forbidden for devices. Names are
    checked when connecting, not when saving, because their addresses can change, so callers
    connect to the returned address instead of resolving the name again.
    Raise socket.gaierror when the name does not resolve.
    """
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise socket.gaierror(f"{host!r} has no address")
    # getaddrinfo returns the addresses in the order to try them (RFC 6724), so the first allowed one is kept.
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    reasons = [forbidden_address_reason(address) for address in addresses]
    for address, reason in zip(addresses, reasons, strict=True):
        if not reason:
            return str(address)
    listed = ", ".join(sorted(str(address) for address in addresses))
    kind = "Address" if literal else "Host name"
    raise ForbiddenHostError(
        f"{kind} {host!r} resolves only to {listed}, which is {reasons[0]}; set the device's host to its "
        "own unicast address or host name."
    )


def tls_files_directory():
    """Return the real path of THERMACORE_TLS_FILES_DIR, or "" when the operator allows no TLS file paths."""
    configured = getattr(settings, "THERMACORE_TLS_FILES_DIR", "")
    return os.path.realpath(configured) if configured else ""


def resolve_tls_file(field, value):
    """Return the real path of a device's TLS file setting; raise ValidationError when it leaves the allowed directory.

    The path is resolved with realpath, so '..' and symbolic links cannot point outside
    THERMACORE_TLS_FILES_DIR. Relative paths are taken relative to that directory.
    """
    directory = tls_files_directory()
    if not directory:
        raise ValidationError({field: (
            f"{field} {value!r} is not allowed: this server takes no TLS file paths (THERMACORE_TLS_FILES_DIR is "
            "not set). Clear it and use the certificate store: import the CA under Certificates and add it to "
            "the device's trusted certificates, or set a client certificate."
        )})
    resolved = os.path.realpath(os.path.join(directory, value))
    if os.path.commonpath([directory, resolved]) != directory:
        raise ValidationError({field: (
            f"{field} {value!r} is outside the TLS files directory {directory} that the operator allows. "
            "Give a file inside that directory, or clear it and use the certificate store instead."
        )})
    return resolved
