import zoneinfo

from django.core.exceptions import ValidationError


def validate_time_zone(value):
    """Reject names that are not in the IANA time zone database, e.g. 'Mars/Olympus'."""
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            "%(value)s is not an IANA time zone name; use a name such as 'Europe/Berlin' or 'UTC'.",
            params={"value": repr(value)},
        )
