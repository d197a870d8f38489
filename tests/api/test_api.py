from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from rest_framework.test import APIClient

from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, access_token_for, admin_of
from tests.factories import DeviceFactory, SensorFactory, SiteFactory, UnitFactory

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


def test_token_obtain_and_refresh(alpha):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])

    obtained = client.post("/api/v1/auth/token/", {"username": "admin", "password": ADMIN_PASSWORD}, format="json")
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": obtained.data["refresh"]}, format="json")

    assert obtained.status_code == 200
    assert refreshed.status_code == 200
    assert "access" in refreshed.data


def test_token_of_other_tenant_is_rejected(alpha, beta):
    token = access_token_for("alpha", admin_of("alpha"))
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["beta"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    response = client.get("/api/v1/units/")

    assert response.status_code == 401
    assert "another tenant" in str(response.data["detail"])


def test_refresh_token_of_other_tenant_is_rejected(alpha, beta):
    obtained = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).post(
        "/api/v1/auth/token/", {"username": "admin", "password": ADMIN_PASSWORD}, format="json"
    )

    response = APIClient(HTTP_HOST=TENANT_DOMAINS["beta"]).post(
        "/api/v1/auth/token/refresh/", {"refresh": obtained.data["refresh"]}, format="json"
    )

    assert response.status_code == 401


def test_api_requires_authentication(alpha):
    response = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/api/v1/units/")

    assert response.status_code == 401


def test_unit_crud(alpha_api):
    site = SiteFactory()

    created = alpha_api.post("/api/v1/units/", {"site": site.id, "name": "Chiller A", "kind": "chiller"}, format="json")
    changed = alpha_api.patch(f"/api/v1/units/{created.data['id']}/", {"status": "maintenance"}, format="json")
    listed = alpha_api.get("/api/v1/units/")
    deleted = alpha_api.delete(f"/api/v1/units/{created.data['id']}/")

    assert created.status_code == 201
    assert changed.data["status"] == "maintenance"
    assert [unit["name"] for unit in listed.data["results"]] == ["Chiller A"]
    assert deleted.status_code == 204


def test_unit_with_unknown_kind_names_field(alpha_api):
    site = SiteFactory()

    response = alpha_api.post("/api/v1/units/", {"site": site.id, "name": "X", "kind": "reactor"}, format="json")

    assert response.status_code == 400
    assert "kind" in response.data
    assert "reactor" in str(response.data["kind"])


def test_sensor_with_inverted_range_names_maximum(alpha_api):
    unit = UnitFactory()
    body = {"unit": unit.id, "name": "Supply", "key": "supply", "quantity": "temperature", "minimum": 100, "maximum": 10}

    response = alpha_api.post("/api/v1/sensors/", body, format="json")

    assert response.status_code == 400
    assert "maximum" in response.data


INVALID_DEVICES = [
    ({"port": 70000}, "port"),
    ({"unit_id": 300}, "unit_id"),
    ({"poll_interval": 0.01}, "poll_interval"),
    ({"timeout": 0}, "timeout"),
    ({"protocol": "bacnet"}, "protocol"),
    ({"host": ""}, "host"),
]


@pytest.mark.parametrize(("changes", "field"), INVALID_DEVICES)
def test_invalid_device_names_field(alpha_api, changes, field):
    body = {"name": "PLC 1", "host": "127.0.0.1", "port": 502, "unit_id": 1, **changes}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 400
    assert list(response.data) == [field]


def test_invalid_point_names_field(alpha_api):
    device = DeviceFactory()
    sensor = SensorFactory()
    body = {"device": device.id, "sensor": sensor.id, "register_type": "coil", "address": 1, "data_type": "float32"}

    response = alpha_api.post("/api/v1/points/", body, format="json")

    assert response.status_code == 400
    assert "data_type" in response.data


def test_point_patch_is_checked_against_stored_values(alpha_api):
    device = DeviceFactory()
    sensor = SensorFactory()
    created = alpha_api.post(
        "/api/v1/points/",
        {"device": device.id, "sensor": sensor.id, "register_type": "holding", "address": 1, "data_type": "uint16"},
        format="json",
    )

    response = alpha_api.patch(f"/api/v1/points/{created.data['id']}/", {"register_type": "coil"}, format="json")

    assert created.status_code == 201
    assert response.status_code == 400
    assert "data_type" in response.data


def test_readings_over_time_range(alpha_api):
    sensor = SensorFactory()
    ingest("alpha", [Sample(sensor.id, T0 + timedelta(minutes=minute), float(minute)) for minute in range(10)])

    response = alpha_api.get(
        f"/api/v1/sensors/{sensor.id}/readings/", {"start": "2026-01-05T10:02:00Z", "end": "2026-01-05T11:05:00+01:00"}
    )

    assert response.status_code == 200
    assert [reading["value"] for reading in response.data["results"]] == [2.0, 3.0, 4.0]
    assert response.data["results"][0]["time"] == "2026-01-05T10:02:00Z"


def test_readings_page_through_by_cursor(alpha_api):
    sensor = SensorFactory()
    ingest("alpha", [Sample(sensor.id, T0 + timedelta(seconds=second), float(second)) for second in range(25)])
    query = {"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T11:00:00Z", "page_size": 10}

    values = []
    url = f"/api/v1/sensors/{sensor.id}/readings/"
    response = alpha_api.get(url, query)
    while True:
        values.extend(reading["value"] for reading in response.data["results"])
        if not response.data["next"]:
            break
        response = alpha_api.get(response.data["next"])

    assert values == [float(second) for second in range(25)]


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"start": "yesterday"}, "start", "ISO 8601"),
        ({"start": "2026-01-05T10:00:00"}, "start", "UTC offset"),
        ({"start": "2026-01-05T12:00:00Z", "end": "2026-01-05T10:00:00Z"}, "start", "before end"),
    ],
)
def test_readings_bad_range_names_parameter(alpha_api, query, field, message):
    sensor = SensorFactory()

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", query)

    assert response.status_code == 400
    assert message in str(response.data[field])


def test_page_size_above_maximum_rejected(alpha_api):
    response = alpha_api.get("/api/v1/units/", {"page_size": 1000000})

    assert response.status_code == 400
    assert "from 1 to 500" in str(response.data["page_size"])


def test_page_size_at_maximum_accepted(alpha_api):
    response = alpha_api.get("/api/v1/units/", {"page_size": 500})

    assert response.status_code == 200


@pytest.mark.parametrize("page_size", ["10001", "100000"])
def test_readings_page_size_above_maximum_rejected(alpha_api, page_size):
    sensor = SensorFactory()
    query = {"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T11:00:00Z", "page_size": page_size}

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", query)

    assert response.status_code == 400
    assert "from 1 to 10000" in str(response.data["page_size"])


def test_other_tenant_objects_are_not_found(alpha_api, beta):
    connection.set_tenant(beta)
    UnitFactory(name="Beta only")
    connection.set_schema_to_public()

    listed = alpha_api.get("/api/v1/units/")

    assert "Beta only" not in [unit["name"] for unit in listed.data["results"]]


def test_openapi_schema_and_docs(alpha_api):
    schema = alpha_api.get("/api/schema/")
    docs = alpha_api.get("/api/docs/")

    assert schema.status_code == 200
    assert b"/api/v1/sensors/{id}/readings/" in schema.content
    assert docs.status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"start": "2026-02-30T00:00:00Z"}, "start"),
        ({"start": "2026-13-45T00:00:00Z"}, "start"),
        ({"start": "2026-12-04T25:00:00Z"}, "start"),
        ({"start": "2026-12-04T21:00:00+99:00"}, "start"),
        ({"end": "0001-01-01T00:30:00Z"}, "end"),
    ],
)
def test_readings_impossible_times_are_400(alpha_api, query, field):
    sensor = SensorFactory()

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", query)

    assert response.status_code == 400
    assert field in response.data


def test_readings_long_bad_value_is_shortened(alpha_api):
    sensor = SensorFactory()

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", {"start": "x" * 5000})

    assert response.status_code == 400
    assert len(str(response.data["start"])) < 300


def test_readings_forged_cursor_is_400(alpha_api):
    sensor = SensorFactory()

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", {"cursor": "cD0yMDI2"})

    assert response.status_code == 400
    assert "cursor" in response.data


def test_delete_site_with_units_is_409(alpha_api):
    unit = UnitFactory(name="Boiler 7")

    response = alpha_api.delete(f"/api/v1/sites/{unit.site_id}/")

    assert response.status_code == 409
    assert "Boiler 7" in response.data["detail"]
    assert "delete or reassign them first" in response.data["detail"]


def test_openapi_schema_documents_bearer_tokens(alpha_api):
    response = alpha_api.get("/api/schema/", {"format": "json"})

    schemes = response.json()["components"]["securitySchemes"]
    assert schemes["jwtAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize("host", ["not a host!! ///", "http://x y z", "plc1:502", "http://plc1/"])
def test_device_host_must_be_bare_host(alpha_api, host):
    body = {"name": "PLC 9", "host": host, "port": 502, "unit_id": 1}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 400
    assert "host" in response.data
    assert "without scheme, port or path" in str(response.data["host"])


@pytest.mark.parametrize("host", ["192.168.1.20", "::1", "plc-1.site.example", "localhost"])
def test_device_host_accepts_addresses_and_names(alpha_api, host):
    body = {"name": f"PLC {host}", "host": host, "port": 502, "unit_id": 1}

    response = alpha_api.post("/api/v1/devices/", body, format="json")

    assert response.status_code == 201, response.data
