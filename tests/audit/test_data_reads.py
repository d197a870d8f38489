"""Reads of sensor history through the API are recorded as data exports: who read which range."""

from datetime import UTC, datetime, timedelta

from apps.audit.choices import ActorType, AuditAction
from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from tests.audit.conftest import chain_head, entries_after
from tests.factories import SensorFactory

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def test_readings_range_read_recorded(alpha_api):
    sensor = SensorFactory()
    ingest("alpha", [Sample(sensor.id, T0 + timedelta(minutes=minute), float(minute)) for minute in range(10)])
    start = chain_head()

    response = alpha_api.get(
        f"/api/v1/sensors/{sensor.id}/readings/", {"start": "2026-01-05T10:02:00Z", "end": "2026-01-05T10:05:00Z"}
    )

    assert response.status_code == 200
    [entry] = entries_after(start)
    assert (entry.action, entry.actor_type, entry.actor_name) == (AuditAction.DATA_EXPORTED, ActorType.USER, "admin")
    assert (entry.object_type, entry.object_id) == ("sensors.sensor", str(sensor.id))
    assert entry.detail == {
        "start": "2026-01-05T10:02:00+00:00",
        "end": "2026-01-05T10:05:00+00:00",
        "rows": 3,
        "path": f"/api/v1/sensors/{sensor.id}/readings/",
    }


def test_rejected_range_records_nothing(alpha_api):
    sensor = SensorFactory()
    start = chain_head()

    response = alpha_api.get(
        f"/api/v1/sensors/{sensor.id}/readings/", {"start": "2026-01-05T11:00:00Z", "end": "2026-01-05T10:00:00Z"}
    )

    assert response.status_code == 400
    assert entries_after(start) == []
