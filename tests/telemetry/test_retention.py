"""Readings retention against real daily partitions: what is dropped, what is kept, and ingest's cut-off."""

from datetime import datetime, time, timedelta, timezone

import pytest
from django.conf import settings
from django.db import connection

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.sensors.samples import Sample
from apps.telemetry import retention
from apps.telemetry.ingest import ingest
from apps.telemetry.models import Reading
from apps.telemetry.partitions import partition_name
from apps.telemetry.retention import apply_retention, list_partitions
from apps.telemetry.tasks import apply_retention_task
from apps.tenants.models import Tenant
from tests.factories import SensorFactory

RETENTION_DAYS = 30
# Noon, so that the cut-off falls in the middle of a day's partition.
NOW = datetime.combine(datetime.now(timezone.utc).date(), time(12), tzinfo=timezone.utc)
CUTOFF = NOW - timedelta(days=RETENTION_DAYS)


@pytest.fixture
def sensor(alpha):
    retention.forget_cached_retention()
    yield SensorFactory(minimum=0, maximum=200)
    retention.forget_cached_retention()


def set_retention(tenant, days):
    Tenant.objects.filter(pk=tenant.pk).update(retention_days=days)
    tenant.retention_days = days
    retention.forget_cached_retention()


def store(sensor, *times):
    result = ingest("alpha", [Sample(sensor.id, when, 50.0) for when in times], spool_on_failure=False)
    assert result.accepted == len(times), result.rejected


def retention_entries():
    return list(AuditEntry.objects.filter(action=AuditAction.OBJECT_DELETED, object_type="telemetry.reading"))


@pytest.fixture
def history(sensor, alpha):
    """Readings 45 and 40 days old, just before and after the cut-off, and yesterday, stored before retention is set."""
    times = {
        "45 days": NOW - timedelta(days=45),
        "40 days": NOW - timedelta(days=40),
        "before cut-off": CUTOFF - timedelta(hours=1),
        "after cut-off": CUTOFF + timedelta(hours=1),
        "yesterday": NOW - timedelta(days=1),
    }
    store(sensor, *times.values())
    set_retention(alpha, RETENTION_DAYS)
    return times


def test_retention_drops_whole_old_days(history, sensor):
    result = apply_retention(now=NOW)

    old_days = [partition_name(history[key].date()) for key in ("45 days", "40 days")]
    assert result.dropped == sorted(name for name in result.dropped)
    for name in old_days:
        assert name in result.dropped
    assert partition_name(CUTOFF.date()) not in result.dropped
    for name in result.dropped:
        assert name not in list_partitions()
    remaining = set(Reading.objects.filter(sensor=sensor).values_list("time", flat=True))
    assert remaining == {history["before cut-off"], history["after cut-off"], history["yesterday"]}


def test_retention_keeps_cutoff_day_with_older_rows(history, sensor):
    apply_retention(now=NOW)

    # The cut-off day's partition also contains younger rows, so its older rows wait for the next day's run.
    assert partition_name(CUTOFF.date()) in list_partitions()
    assert Reading.objects.filter(sensor=sensor, time=history["before cut-off"]).exists()


def test_retention_is_idempotent_and_audited_once(history):
    first = apply_retention(now=NOW)
    second = apply_retention(now=NOW)

    assert first.dropped
    assert second.dropped == []
    entries = retention_entries()
    assert len(entries) == 1
    assert entries[0].actor_id == "telemetry.apply_retention"
    assert entries[0].detail["dropped"] == first.dropped
    assert entries[0].detail["retention_days"] == RETENTION_DAYS
    assert entries[0].detail["cutoff"] == CUTOFF.isoformat()


def test_retention_skips_partition_with_young_rows(sensor, alpha):
    # A partition whose name says 2001-01-01 but whose range contains recent data must survive.
    misnamed = "telemetry_reading_p20010101"
    start = datetime.combine(NOW.date() + timedelta(days=settings.TELEMETRY_PARTITIONS_AHEAD_DAYS + 30), time.min,
                             tzinfo=timezone.utc)
    with connection.cursor() as cursor:
        cursor.execute(
            f'CREATE TABLE "{misnamed}" PARTITION OF telemetry_reading FOR VALUES FROM (%s) TO (%s)',
            [start, start + timedelta(days=1)],
        )
        cursor.execute(
            "INSERT INTO telemetry_reading (sensor_id, time, value, quality) VALUES (%s, %s, 1.0, 0)",
            [sensor.id, start + timedelta(hours=1)],
        )
    set_retention(alpha, RETENTION_DAYS)

    result = apply_retention(now=NOW)

    assert misnamed in result.skipped
    assert misnamed not in result.dropped
    assert misnamed in list_partitions()
    assert Reading.objects.filter(sensor=sensor, time=start + timedelta(hours=1)).exists()


def test_retention_without_limit_drops_nothing(sensor, alpha):
    store(sensor, NOW - timedelta(days=400))
    set_retention(alpha, None)

    result = apply_retention(now=NOW)

    assert result.dropped == []
    assert partition_name((NOW - timedelta(days=400)).date()) in list_partitions()
    assert retention_entries() == []


def test_retention_task_runs_in_current_schema(history):
    outcome = apply_retention_task()

    assert partition_name(history["45 days"].date()) in outcome["dropped"]
    assert partition_name(history["45 days"].date()) not in list_partitions()


def test_retention_task_is_scheduled_for_tenants():
    entries = [entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == "telemetry.apply_retention"]

    assert len(entries) == 1
    # No tenant_schemas key: the tenant-aware scheduler sends it to every active tenant.
    assert "tenant_schemas" not in entries[0]


def test_ingest_rejects_reading_older_than_retention(sensor, alpha):
    set_retention(alpha, RETENTION_DAYS)
    too_old = datetime.now(timezone.utc) - timedelta(days=RETENTION_DAYS, hours=2)
    recent = datetime.now(timezone.utc) - timedelta(days=RETENTION_DAYS - 1)
    partitions_before = set(list_partitions())

    result = ingest("alpha", [Sample(sensor.id, too_old, 1.0), Sample(sensor.id, recent, 2.0)], spool_on_failure=False)

    assert result.accepted == 1
    assert len(result.rejected) == 1
    rejection = result.rejected[0]
    assert rejection.index == 0
    assert "retention cut-off" in rejection.reason
    assert too_old.isoformat() in rejection.reason
    assert partition_name(too_old.date()) not in set(list_partitions()) - partitions_before
    assert not Reading.objects.filter(sensor=sensor, time=too_old).exists()
    assert Reading.objects.filter(sensor=sensor, time=recent).exists()


def test_http_ingest_names_retention_rejection(alpha_api, sensor, alpha):
    set_retention(alpha, RETENTION_DAYS)
    too_old = (datetime.now(timezone.utc) - timedelta(days=RETENTION_DAYS + 5)).isoformat()

    response = alpha_api.post(
        "/api/v1/ingest/", {"readings": [{"sensor": sensor.id, "time": too_old, "value": 1.0}]}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert response.json()["rejected"] == 1
    assert response.json()["rejections"][0]["index"] == 0
    assert "retention cut-off" in response.json()["rejections"][0]["reason"]


def test_stored_huge_retention_is_capped(sensor, alpha):
    # A value stored before the model had a maximum must not break ingest or the retention run.
    set_retention(alpha, 1_000_000_000)
    now = datetime.now(timezone.utc)

    store(sensor, now - timedelta(minutes=1))
    result = apply_retention(now=now)

    assert result.dropped == []
    assert result.cutoff.year >= now.year - 100
