import ipaddress
import re
import zoneinfo

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

# PostgreSQL identifiers are case-folded and limited to 63 bytes; the
# "pg_" prefix is reserved for system schemas.
schema_name_validator = RegexValidator(
    r"^(?!pg_)[a-z][a-z0-9_]{0,62}$",
    "Use 1 to 63 lowercase letters, digits or underscores, starting with a letter and not with 'pg_'.",
)

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
HOST_NAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def validate_time_zone(value):
    """Reject names that are not in the IANA time zone database, e.g. 'Mars/Olympus'."""
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            "%(value)s is not an IANA time zone name; use a name such as 'Europe/Berlin' or 'UTC'.",
            params={"value": repr(value)},
        )


def validate_domain_name(value):
    """Accept a bare lowercase host name such as 'acme.example.com'; reject schemes, ports and paths."""
    if value != value.lower() or not HOST_NAME_PATTERN.match(value):
        raise ValidationError(
            "%(value)s is not a host name; give only the lowercase name, e.g. 'acme.example.com', "
            "without scheme, port or path.",
            params={"value": repr(value)},
        )


# The periods DRF's SimpleRateThrottle.parse_rate understands (it reads the first letter).
THROTTLE_RATE_PATTERN = re.compile(r"^[1-9][0-9]{0,8}/(s|sec|second|m|min|minute|h|hour|d|day)$")


def validate_throttle_rate(value):
    """Accept a DRF throttle rate such as '600/min' or '20/s'."""
    if not isinstance(value, str) or not THROTTLE_RATE_PATTERN.match(value):
        raise ValidationError(
            "%(value)s is not a request rate; write a count and a period, e.g. '600/min', '20/s', '5000/hour' or '100000/day'.",
            params={"value": repr(value)},
        )


def validate_network(value):
    """Accept an IPv4 or IPv6 network in CIDR notation without host bits, e.g. '10.20.0.0/16'."""
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValidationError(
            "%(value)s is not a network in CIDR notation (%(reason)s); write e.g. '10.20.0.0/16' or '2001:db8::/32'.",
            params={"value": repr(value), "reason": str(exc)},
        ) from None
