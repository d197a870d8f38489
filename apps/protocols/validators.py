import ipaddress

from django.core.exceptions import ValidationError

from apps.tenants.validators import HOST_NAME_PATTERN


def validate_host(value):
    """Accept an IPv4 or IPv6 address or a host name; reject URLs, ports and spaces."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not HOST_NAME_PATTERN.match(value):
        raise ValidationError(
            "%(value)s is not an IP address or host name; give only the host, e.g. '192.168.1.20' or "
            "'plc1.example.net', without scheme, port or path.",
            params={"value": repr(value)},
        )
