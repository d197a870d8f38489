import math
from datetime import datetime, timezone

import pytest

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.telemetry.batches import parse_reading, parse_readings

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


def test_parse_reading_defaults_quality_to_good():
    sample = parse_reading({"sensor": 12, "time": "2026-01-05T10:00:00Z", "value": 21})

    assert sample == Sample(12, T0, 21.0, Quality.GOOD)
    assert isinstance(sample.value, float)


def test_parse_reading_epoch_seconds_not_1970():
    sample = parse_reading({"sensor": 1, "time": 1559206140, "value": 1.0})

    assert sample.time == datetime(2019, 5, 30, 8, 49, tzinfo=timezone.utc)


def test_parse_reading_passes_non_finite_value_to_ingest():
    sample = parse_reading({"sensor": 1, "time": "2026-01-05T10:00:00Z", "value": math.inf})

    assert sample.value == math.inf


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"sensor": True, "time": "2026-01-05T10:00:00Z", "value": 1}, "True is not a sensor id"),
        ({"sensor": 0, "time": "2026-01-05T10:00:00Z", "value": 1}, "0 is not a sensor id"),
        ({"sensor": 1, "time": "yesterday", "value": 1}, "'yesterday'"),
        ({"sensor": 1, "time": "2026-01-05T10:00:00Z", "value": True}, "True is not a number"),
        ({"sensor": 1, "time": "2026-01-05T10:00:00Z", "value": 1, "quality": -1}, "Quality -1"),
        ({"sensor": 1, "time": "2026-01-05T10:00:00Z", "value": 1, "quality": 1.5}, "Quality 1.5"),
        ({"time": "2026-01-05T10:00:00Z"}, "Missing fields sensor, value"),
        ([1, 2], "is not an object"),
    ],
)
def test_parse_reading_rejects_with_reason(item, message):
    with pytest.raises(ValueError) as raised:
        parse_reading(item)

    assert message in str(raised.value)


def test_parse_readings_keeps_request_indexes():
    items = [
        {"sensor": 1, "time": "2026-01-05T10:00:00Z", "value": 1},
        {"sensor": 1, "time": "bad", "value": 2},
        {"sensor": 2, "time": "2026-01-05T10:00:00Z", "value": 3},
    ]

    batch = parse_readings(items)

    assert [sample.sensor_id for sample in batch.samples] == [1, 2]
    assert batch.indexes == [0, 2]
    assert [(rejection.index, rejection.sensor_id) for rejection in batch.rejected] == [(1, 1)]
