"""Latest values in Redis: a field is replaced only by a newer timestamp, and the changed sensors are returned."""

from datetime import UTC, datetime, timedelta

from apps.sensors.samples import Sample
from apps.telemetry import latest

START = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_store_latest_returns_changed_sensors():
    samples = [Sample(sensor_id, START, float(sensor_id), 0) for sensor_id in range(1, 2001)]

    changed = latest.store_latest("alpha", samples)

    assert changed == set(range(1, 2001))
    assert latest.get_latest("alpha", [7])[7] == (START, 7.0, 0)


def test_older_reading_keeps_live_value():
    latest.store_latest("alpha", [Sample(1, START, 10.0, 0), Sample(2, START, 20.0, 0)])

    changed = latest.store_latest(
        "alpha", [Sample(1, START - timedelta(seconds=1), -1.0, 0), Sample(2, START + timedelta(seconds=1), None, 192)]
    )

    assert changed == {2}
    stored = latest.get_latest("alpha", [1, 2])
    assert stored[1] == (START, 10.0, 0)
    assert stored[2] == (START + timedelta(seconds=1), None, 192)


def test_same_time_is_not_newer():
    latest.store_latest("alpha", [Sample(3, START, 1.0, 0)])

    assert latest.store_latest("alpha", [Sample(3, START, 2.0, 0)]) == set()
    assert latest.get_latest("alpha", [3])[3] == (START, 1.0, 0)


def test_newest_sample_of_batch_wins():
    changed = latest.store_latest("alpha", [Sample(4, START + timedelta(seconds=5), 5.0, 0), Sample(4, START, 0.0, 0)])

    assert changed == {4}
    assert latest.get_latest("alpha", [4])[4] == (START + timedelta(seconds=5), 5.0, 0)
