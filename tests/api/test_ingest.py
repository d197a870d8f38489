from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from apps.alarms.models import Alarm, AlarmRule
from apps.sensors.quality import Quality
from apps.telemetry import latest
from apps.telemetry.models import Reading
from tests.conftest import TENANT_DOMAINS, access_token_for
from tests.factories import SensorFactory

URL = "/api/v1/ingest/"


@pytest.fixture
def sensor(alpha):
    return SensorFactory(minimum=0, maximum=200)


def stored(sensor):
    return list(Reading.objects.filter(sensor=sensor).order_by("time").values_list("time", "value", "quality"))


def test_ingest_stores_readings_and_counts(alpha_api, sensor):
    body = {
        "readings": [
            {"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 21.5, "quality": 0},
            {"sensor": sensor.id, "time": "2026-01-05T10:00:10Z", "value": 21.7},
        ]
    }

    response = alpha_api.post(URL, body, format="json")

    assert response.status_code == 200
    assert response.data == {"accepted": 2, "spooled": 0, "duplicates": 0, "rejected": 0, "rejections": []}
    assert stored(sensor) == [
        (datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc), 21.5, Quality.GOOD),
        (datetime(2026, 1, 5, 10, 0, 10, tzinfo=timezone.utc), 21.7, Quality.GOOD),
    ]


def test_ingest_repeat_is_duplicate(alpha_api, sensor):
    body = {"readings": [{"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 21.5}]}

    first = alpha_api.post(URL, body, format="json")
    second = alpha_api.post(URL, body, format="json")

    assert first.data["accepted"] == 1
    assert second.data["accepted"] == 0
    assert second.data["duplicates"] == 1
    assert len(stored(sensor)) == 1


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        (1559206140, datetime(2019, 5, 30, 8, 49, tzinfo=timezone.utc)),
        (1559206140000, datetime(2019, 5, 30, 8, 49, tzinfo=timezone.utc)),
        ("2024-03-31T03:30:00+02:00", datetime(2024, 3, 31, 1, 30, tzinfo=timezone.utc)),
    ],
)
def test_ingest_timestamp_forms(alpha_api, sensor, time, expected):
    response = alpha_api.post(URL, {"readings": [{"sensor": sensor.id, "time": time, "value": 1.0}]}, format="json")

    assert response.data["accepted"] == 1
    assert stored(sensor)[0][0] == expected


def test_ingest_rejects_malformed_items_and_keeps_valid(alpha_api, sensor):
    readings = [
        {"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 1.0},
        {"sensor": sensor.id, "time": "2026-01-05T10:00:00", "value": 2.0},
        {"sensor": "twelve", "time": "2026-01-05T10:00:01Z", "value": 3.0},
        {"sensor": sensor.id, "time": "2026-01-05T10:00:02Z", "value": "hot"},
        {"sensor": 999999, "time": "2026-01-05T10:00:03Z", "value": 4.0},
        {"sensor": sensor.id, "time": "2026-01-05T10:00:04Z", "value": 5.0, "quality": 999},
        "not an object",
        {"sensor": sensor.id, "value": 6.0},
        {"sensor": sensor.id, "time": "2026-01-05T10:00:05Z", "value": 7.0, "unit": "°C"},
        {"sensor": sensor.id, "time": "2026-01-05T10:00:06Z", "value": 8.0},
    ]

    response = alpha_api.post(URL, {"readings": readings}, format="json")

    assert response.status_code == 200
    assert response.data["accepted"] == 2
    assert response.data["rejected"] == 8
    reasons = {rejection["index"]: rejection["reason"] for rejection in response.data["rejections"]}
    assert list(reasons) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "no UTC offset" in reasons[1]
    assert "'twelve' is not a sensor id" in reasons[2]
    assert "'hot' is not a number" in reasons[3]
    assert "999999" in reasons[4]
    assert "does not exist" in reasons[4]
    assert "Quality 999" in reasons[5]
    assert "not an object" in reasons[6]
    assert "Missing fields time" in reasons[7]
    assert "Unknown fields unit" in reasons[8]
    assert [row[1] for row in stored(sensor)] == [1.0, 8.0]


def test_ingest_future_reading_is_rejected_with_index(alpha_api, sensor):
    readings = [
        {"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 1.0},
        {"sensor": sensor.id, "time": "2099-01-01T00:00:00Z", "value": 2.0},
    ]

    response = alpha_api.post(URL, {"readings": readings}, format="json")

    assert response.data["accepted"] == 1
    assert response.data["rejections"][0]["index"] == 1
    assert "ahead of the server clock" in response.data["rejections"][0]["reason"]


def test_ingest_null_value_with_bad_quality(alpha_api, sensor):
    body = {"readings": [{"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": None, "quality": 129}]}

    response = alpha_api.post(URL, body, format="json")

    assert response.data["accepted"] == 1
    assert stored(sensor)[0][1:] == (None, Quality.BAD_COMM_LOST)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '"readings" list'),
        ([], '"readings" list'),
        ({"readings": {"sensor": 1}}, "send a list"),
    ],
)
def test_ingest_invalid_body_is_bad_request(alpha_api, body, message):
    response = alpha_api.post(URL, body, format="json")

    assert response.status_code == 400
    assert message in str(response.data["readings"])


def test_ingest_batch_limit(alpha_api, sensor):
    reading = {"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 1.0}

    response = alpha_api.post(URL, {"readings": [reading] * 10_001}, format="json")

    assert response.status_code == 400
    assert "10001 items" in str(response.data["readings"])
    assert stored(sensor) == []


def test_ingest_full_batch_of_ten_thousand(alpha_api, sensor):
    readings = [
        {"sensor": sensor.id, "time": 1767607200 + second, "value": float(second % 100)} for second in range(10_000)
    ]

    response = alpha_api.post(URL, {"readings": readings}, format="json")

    assert response.status_code == 200
    assert response.data["accepted"] == 10_000
    assert Reading.objects.filter(sensor=sensor).count() == 10_000


def test_ingest_requires_authentication(alpha):
    response = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).post(URL, {"readings": []}, format="json")

    assert response.status_code == 401


def test_ingest_without_permission_is_denied(alpha, sensor):
    viewer = get_user_model().objects.create_user("viewer", password="Viewer-pass-4711")
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', viewer)}")
    body = {"readings": [{"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 1.0}]}

    response = client.post(URL, body, format="json")

    assert response.status_code == 403
    assert stored(sensor) == []


def test_ingest_sensor_of_other_tenant_is_rejected(alpha_api, beta):
    from django.db import connection

    connection.set_tenant(beta)
    beta_sensor = SensorFactory()
    connection.set_schema_to_public()
    body = {"readings": [{"sensor": beta_sensor.id + 100000, "time": "2026-01-05T10:00:00Z", "value": 1.0}]}

    response = alpha_api.post(URL, body, format="json")

    assert response.data["accepted"] == 0
    assert "does not exist in this tenant" in response.data["rejections"][0]["reason"]


def test_ingest_raises_alarm_and_updates_live_value(alpha_api, sensor, django_capture_on_commit_callbacks):
    AlarmRule.objects.create(sensor=sensor, condition="hi", limit=100.0)
    body = {
        "readings": [
            {"sensor": sensor.id, "time": "2026-01-05T10:00:00Z", "value": 95.0},
            {"sensor": sensor.id, "time": "2026-01-05T10:00:10Z", "value": 105.0},
        ]
    }

    with django_capture_on_commit_callbacks(execute=True):
        response = alpha_api.post(URL, body, format="json")

    assert response.data["accepted"] == 2
    alarm = Alarm.objects.get()
    assert alarm.activated_at == datetime(2026, 1, 5, 10, 0, 10, tzinfo=timezone.utc)
    assert latest.get_latest("alpha", [sensor.id])[sensor.id][1] == 105.0


def test_ingest_rejects_out_of_range_numbers(alpha_api, sensor):
    huge = "1" + "0" * 400
    body = (
        '{"readings": ['
        f'{{"sensor": {sensor.id}, "time": {huge}, "value": 1.0}},'
        f'{{"sensor": {sensor.id}, "time": "0001-01-01T00:00:00+01:00", "value": 2.0}},'
        f'{{"sensor": {sensor.id}, "time": "2026-01-05T10:00:00Z", "value": {huge}}},'
        f'{{"sensor": {huge}, "time": "2026-01-05T10:00:00Z", "value": 3.0}},'
        f'{{"sensor": {2**63}, "time": "2026-01-05T10:00:00Z", "value": 4.0}},'
        f'{{"sensor": {sensor.id}, "time": "2026-01-05T10:00:01Z", "value": 5.0}}'
        "]}"
    )

    response = alpha_api.generic("POST", URL, body, content_type="application/json")

    assert response.status_code == 200, response.content[:300]
    reasons = {rejection["index"]: rejection["reason"] for rejection in response.data["rejections"]}
    assert list(reasons) == [0, 1, 2, 3, 4]
    assert "out of range" in reasons[0]
    assert "out of range" in reasons[1]
    assert "too large for a double" in reasons[2]
    assert "is not a sensor id" in reasons[3]
    assert len(reasons[3]) < 200
    assert "is not a sensor id" in reasons[4]
    assert [row[1] for row in stored(sensor)] == [5.0]
