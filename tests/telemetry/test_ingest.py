import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.telemetry import latest, subscribers
from apps.telemetry.ingest import ingest
from apps.telemetry.models import Reading
from tests.factories import SensorFactory

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def sensor(alpha):
    return SensorFactory(minimum=0, maximum=200)


@pytest.fixture
def received(monkeypatch):
    """Collect what the subscribers are handed after each committed ingest."""
    calls = []

    def record(schema, samples, live_sensor_ids):
        calls.append((schema, list(samples), set(live_sensor_ids)))

    subscribers.subscribe(record)
    yield calls
    subscribers.unsubscribe(record)


def stored_rows(sensor):
    return list(Reading.objects.filter(sensor=sensor).order_by("time").values_list("time", "value", "quality"))


def test_ingest_out_of_order_and_repeat(sensor, received, django_capture_on_commit_callbacks):
    messages = [(0, 10.0), (20, 12.0), (10, 11.0), (20, 12.0)]

    with django_capture_on_commit_callbacks(execute=True):
        results = [
            ingest("alpha", [Sample(sensor.id, T0 + timedelta(seconds=offset), value)]) for offset, value in messages
        ]

    assert [row[1] for row in stored_rows(sensor)] == [10.0, 11.0, 12.0]
    assert [row[0] for row in stored_rows(sensor)] == [T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    assert results[3].accepted == 0
    assert results[3].duplicates == 1
    live_time, live_value, _ = latest.get_latest("alpha", [sensor.id])[sensor.id]
    assert live_value == 12.0
    assert live_time == T0 + timedelta(seconds=20)
    # The late 11.0 and the repeat reach no subscriber as a live change.
    assert [call[2] for call in received] == [{sensor.id}, {sensor.id}, set()]
    assert len(received) == 3


def test_ingest_duplicate_within_batch(sensor):
    result = ingest("alpha", [Sample(sensor.id, T0, 1.0), Sample(sensor.id, T0, 2.0)])

    assert result.accepted == 1
    assert result.duplicates == 1
    assert stored_rows(sensor) == [(T0, 1.0, Quality.GOOD)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_ingest_non_finite_is_bad_without_value(sensor, value):
    result = ingest("alpha", [Sample(sensor.id, T0, value)])

    assert result.accepted == 1
    assert stored_rows(sensor) == [(T0, None, Quality.BAD_NOT_A_NUMBER)]


@pytest.mark.parametrize("value", [-0.5, 200.5])
def test_ingest_out_of_range_is_bad(sensor, value):
    ingest("alpha", [Sample(sensor.id, T0, value)])

    assert stored_rows(sensor) == [(T0, None, Quality.BAD_OUT_OF_RANGE)]


def test_ingest_range_limits_are_inclusive(sensor):
    ingest("alpha", [Sample(sensor.id, T0, 0.0), Sample(sensor.id, T0 + timedelta(seconds=1), 200.0)])

    assert [row[2] for row in stored_rows(sensor)] == [Quality.GOOD, Quality.GOOD]


def test_ingest_rejects_unknown_sensor_and_keeps_others(sensor):
    result = ingest("alpha", [Sample(999999, T0, 1.0), Sample(sensor.id, T0, 2.0)])

    assert result.accepted == 1
    assert len(result.rejected) == 1
    assert result.rejected[0].index == 0
    assert "999999" in result.rejected[0].reason
    assert "does not exist" in result.rejected[0].reason


def test_ingest_rejects_far_future(sensor):
    future = datetime.now(UTC) + timedelta(hours=2)

    result = ingest("alpha", [Sample(sensor.id, future, 1.0)])

    assert result.accepted == 0
    assert "ahead of the server clock" in result.rejected[0].reason
    assert stored_rows(sensor) == []


def test_ingest_converts_offsets_and_naive_times_to_utc(sensor):
    local = datetime(2024, 3, 31, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 3, 31, 2, 0)

    ingest("alpha", [Sample(sensor.id, local, 1.0), Sample(sensor.id, naive, 2.0)])

    times = [row[0] for row in stored_rows(sensor)]
    assert times == [datetime(2024, 3, 31, 1, 30, tzinfo=UTC), datetime(2024, 3, 31, 2, 0, tzinfo=UTC)]


def test_ingest_creates_partition_for_old_day(sensor):
    old = datetime(2019, 5, 30, 8, 49, tzinfo=UTC)

    ingest("alpha", [Sample(sensor.id, old, 5.0)])

    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('telemetry_reading_p20190530') IS NOT NULL")
        assert cursor.fetchone()[0]
    assert stored_rows(sensor) == [(old, 5.0, Quality.GOOD)]


def _partition_count():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass('telemetry_reading')"
        )
        return cursor.fetchone()[0]


def test_ingest_rejects_readings_beyond_max_age(sensor):
    ancient = [Sample(sensor.id, datetime(1901, 1, 1, tzinfo=UTC) + timedelta(days=day), 1.0) for day in range(50)]
    recent = Sample(sensor.id, T0, 2.0)
    partitions_before = _partition_count()

    result = ingest("alpha", [*ancient, recent], spool_on_failure=False)

    assert result.accepted == 1
    assert [rejection.index for rejection in result.rejected] == list(range(50))
    reason = result.rejected[0].reason
    assert "1901-01-01T00:00:00+00:00" in reason
    assert "maximum age of 3650 days" in reason
    assert "THERMACORE_MAX_AGE_DAYS" in reason
    assert _partition_count() - partitions_before <= 1
    assert stored_rows(sensor) == [(T0, 2.0, Quality.GOOD)]


def test_ingest_max_age_follows_setting(sensor, settings):
    settings.TELEMETRY_MAX_AGE_DAYS = 2
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    yesterday = datetime.now(UTC) - timedelta(days=1)

    result = ingest("alpha", [Sample(sensor.id, three_days_ago, 1.0), Sample(sensor.id, yesterday, 2.0)])

    assert result.accepted == 1
    assert len(result.rejected) == 1
    assert "maximum age of 2 days" in result.rejected[0].reason


def test_ingest_keeps_tenants_apart(sensor, beta):
    ingest("alpha", [Sample(sensor.id, T0, 1.0)])

    connection.set_tenant(beta)
    assert Reading.objects.count() == 0
    assert latest.get_latest("beta", [sensor.id]) == {}


def test_subscriber_failure_does_not_stop_others(sensor, received, django_capture_on_commit_callbacks):
    def broken(schema, samples, live_sensor_ids):
        raise RuntimeError("subscriber bug")

    subscribers.subscribe(broken)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            ingest("alpha", [Sample(sensor.id, T0, 1.0)])
    finally:
        subscribers.unsubscribe(broken)

    assert len(received) == 1


def test_partition_task_creates_days_ahead(alpha, settings):
    from apps.telemetry.partitions import forget_known_partitions, partition_name
    from apps.telemetry.tasks import ensure_partitions_task

    settings.TELEMETRY_PARTITIONS_AHEAD_DAYS = 30
    forget_known_partitions("alpha")
    ensure_partitions_task.apply()

    far_day = datetime.now(UTC).date() + timedelta(days=30)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [partition_name(far_day)])
        assert cursor.fetchone()[0]
