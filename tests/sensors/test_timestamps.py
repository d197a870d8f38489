from datetime import datetime, timezone

import pytest

from apps.sensors.timestamps import parse_timestamp

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=timezone.utc)
T0_EPOCH = 1767607200


@pytest.mark.parametrize(
    "raw",
    [
        T0_EPOCH,
        float(T0_EPOCH),
        str(T0_EPOCH),
        T0_EPOCH * 1000,
        f"{T0_EPOCH * 1000}",
        T0_EPOCH * 1_000_000,
        T0_EPOCH * 1_000_000_000,
        "2026-01-05T10:00:00Z",
        "2026-01-05T10:00:00+00:00",
        "2026-01-05T11:00:00+01:00",
        "2026-01-05T04:30:00-05:30",
    ],
)
def test_parse_timestamp_forms(raw):
    assert parse_timestamp(raw) == T0


def test_parse_timestamp_keeps_milliseconds():
    assert parse_timestamp(T0_EPOCH * 1000 + 250) == T0.replace(microsecond=250_000)


def test_parse_timestamp_seconds_with_fraction():
    assert parse_timestamp(T0_EPOCH + 0.5) == T0.replace(microsecond=500_000)


def test_parse_timestamp_returns_utc():
    assert parse_timestamp("2026-01-05T11:00:00+01:00").tzinfo == timezone.utc


def test_parse_timestamp_naive_iso_rejected():
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_timestamp("2026-01-05T10:00:00")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("yesterday", "neither an epoch number nor ISO 8601"),
        (-5, "not a valid epoch time"),
        (float("nan"), "not a valid epoch time"),
        (1e21, "too large"),
        (True, "not a time"),
        (None, "not a time"),
        ([T0_EPOCH], "has type list"),
    ],
)
def test_parse_timestamp_invalid(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_timestamp(raw)


@pytest.mark.parametrize("text", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-10:00"])
def test_iso_outside_utc_range_is_value_error(text):
    with pytest.raises(ValueError) as raised:
        parse_timestamp(text)

    assert str(raised.value) == f"Timestamp {text!r} is out of range in UTC; send a time between the years 1 and 9999."
