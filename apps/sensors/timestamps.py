"""Parsing of source timestamps as devices and gateways send them.

Epoch numbers come in seconds, milliseconds, microseconds or nanoseconds
without a unit, so the unit is inferred from the magnitude. Any time between
1973 and 5138 has a different number of digits in each unit, so the
thresholds below read every timestamp in that span correctly.
"""

import math
from datetime import datetime, timezone

# Upper bounds (exclusive) of an epoch value in each unit, checked in order.
_EPOCH_UNITS = (
    (1e11, 1, "seconds"),  # 1e11 s is the year 5138
    (1e14, 1e3, "milliseconds"),  # 1e11 ms is March 1973
    (1e17, 1e6, "microseconds"),
    (1e20, 1e9, "nanoseconds"),
)


def parse_timestamp(raw):
    """Return ``raw`` as an aware UTC datetime.

    Accepts epoch numbers (int, float or a numeric string) in seconds, milliseconds,
    microseconds or nanoseconds. Also accepts ISO 8601 strings with a UTC offset or ``Z``,
    and the offset is honoured. Raises ValueError for a naive ISO string, a negative or
    non-finite number, a bool, or anything else.
    """
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"Timestamp {raw!r} is not a time; send epoch seconds or milliseconds, or ISO 8601.")
    if isinstance(raw, (int, float)):
        return _from_epoch(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            number = float(text)
        except ValueError:
            return _from_iso(text)
        return _from_epoch(number)
    raise ValueError(
        f"Timestamp {raw!r} has type {type(raw).__name__}; send epoch seconds or milliseconds, or ISO 8601."
    )


def _from_epoch(number):
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"Timestamp {number!r} is not a valid epoch time; send a positive, finite number.")
    for limit, per_second, _unit in _EPOCH_UNITS:
        if number < limit:
            return datetime.fromtimestamp(number / per_second, tz=timezone.utc)
    raise ValueError(f"Timestamp {number!r} is too large for epoch nanoseconds; check the unit the device sends.")


def _from_iso(text):
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Timestamp {text!r} is neither an epoch number nor ISO 8601; use e.g. 2026-01-05T10:00:00Z."
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"Timestamp {text!r} has no UTC offset; append Z or an offset such as +01:00.")
    return to_utc(parsed, text)


def to_utc(aware, text):
    """Return the aware datetime ``aware`` in UTC; raise ValueError naming ``text`` when UTC lies outside years 1 to 9999."""
    try:
        return aware.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(
            f"Timestamp {text!r} is out of range in UTC; send a time between the years 1 and 9999."
        ) from None
