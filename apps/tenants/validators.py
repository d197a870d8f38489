import functools
import ipaddress
import re
import zoneinfo
from importlib import resources

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django_tenants.utils import get_public_schema_name

# PostgreSQL identifiers are case-folded and limited to 63 bytes; the
# "pg_" prefix is reserved for system schemas.
_schema_name_pattern = RegexValidator(r"^(?!pg_)[a-z][a-z0-9_]{0,62}$")

# Schemas that every PostgreSQL database has (besides the pg_* ones) and that no tenant may ever use.
SYSTEM_SCHEMA_NAMES = frozenset({"information_schema"})


def schema_name_validator(value):
    """Reject names PostgreSQL cannot use for a tenant schema: bad syntax, pg_* and information_schema."""
    try:
        _schema_name_pattern(value)
    except ValidationError:
        raise ValidationError(
            "%(value)s is not a valid schema name; use 1 to 63 lowercase letters, digits or underscores, starting "
            "with a letter and not with 'pg_'.",
            params={"value": repr(value)},
        ) from None
    if value in SYSTEM_SCHEMA_NAMES:
        raise ValidationError(
            "%(value)s is a PostgreSQL system schema; choose another schema name.", params={"value": repr(value)}
        )


def validate_new_schema_name(value):
    """Validate the schema name of a tenant still to be created: schema_name_validator, and not the public schema."""
    schema_name_validator(value)
    if value == get_public_schema_name():
        raise ValidationError(
            "%(value)s is the platform's own schema; choose another schema name.", params={"value": repr(value)}
        )

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
HOST_NAME_PATTERN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@functools.cache
def iana_time_zones():
    """Return the zone names of the IANA time zone database that zoneinfo can load.

    zoneinfo.available_timezones() also lists files of the system's zoneinfo
    directory that are no IANA zones, such as 'localtime' (a link to the
    host's /etc/localtime), so the list comes from the pinned tzdata package.
    """
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8").split()
    return frozenset(listed) & zoneinfo.available_timezones()


def validate_time_zone(value):
    """Reject names that are not in the IANA time zone database, e.g. 'Mars/Olympus' or 'localtime'."""
    if value not in iana_time_zones():
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
