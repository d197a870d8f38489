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
