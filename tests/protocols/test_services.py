"""Setpoint writes through the service and the API, against a real Modbus server."""

import logging

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.protocols.services import InvalidSetpoint, SetpointError, write_setpoint
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of, free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user("operator", password="Operator-password-4711", role=Role.OPERATOR)


@pytest.fixture
def viewer(alpha):
    return get_user_model().objects.create_user("viewer", password="Viewer-password-4711", role=Role.VIEWER)


def setpoint_point(register_server, **fields):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    fields.setdefault("sensor", SensorFactory(minimum=0, maximum=90))
    return PointFactory(device=device, register_type="holding", address=100, **fields)


def test_write_setpoint_float32_cdab(alpha, register_server, operator, caplog):
    point = setpoint_point(register_server, data_type="float32", byte_order="CDAB")
    caplog.set_level(logging.INFO, logger="apps.protocols.services")

    result = write_setpoint(point, 12.5, actor=operator)

    assert register_server.get("holding", 100, 2) == [0x0000, 0x4148]
    assert result.written == 12.5
    assert result.read_back == 12.5
    assert f"User {operator.pk} wrote setpoint 12.5 to point {point.pk}" in caplog.text
    entry = AuditEntry.objects.get(action=AuditAction.SETPOINT_WRITTEN)
    assert entry.outcome == Outcome.SUCCESS
    assert entry.actor_id == str(operator.pk)
    assert entry.object_type == "protocols.point"
    assert entry.object_id == str(point.pk)
    assert entry.detail["requested"] == 12.5
    assert entry.detail["read_back"] == 12.5


def test_write_setpoint_audits_previous_value(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32", byte_order="CDAB")
    register_server.set("holding", 100, [0x0000, 0x41A0])

    write_setpoint(point, 12.5, actor=operator)

    entry = AuditEntry.objects.get(action=AuditAction.SETPOINT_WRITTEN)
    assert entry.detail["previous"] == 20.0
    assert entry.detail["requested"] == 12.5
    assert entry.detail["written"] == 12.5


def test_write_setpoint_rounds_to_float32(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32")

    result = write_setpoint(point, 12.3, actor=operator)

    assert result.requested == 12.3
    assert result.read_back == result.written
    assert result.written == pytest.approx(12.3, rel=1e-7)


def test_write_setpoint_bit_read_modify_write(alpha, register_server, operator):
    register_server.set("holding", 100, [0x6481])
    point = setpoint_point(register_server, data_type="bit", bit=8, sensor=SensorFactory(minimum=0, maximum=1))

    result = write_setpoint(point, 1, actor=operator)

    assert register_server.get("holding", 100) == [0x6581]
    assert result.read_back == 1.0


def test_write_setpoint_outside_sensor_range(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32")

    with pytest.raises(InvalidSetpoint, match=r"outside the range of sensor .* \(0 to 90 °C\)"):
        write_setpoint(point, 95, actor=operator)

    assert register_server.get("holding", 100, 2) == [0, 0]
    assert register_server.requests == []
    assert not AuditEntry.objects.filter(action=AuditAction.SETPOINT_WRITTEN).exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "12", None])
def test_write_setpoint_not_a_number(alpha, register_server, operator, value):
    point = setpoint_point(register_server, data_type="float32")

    with pytest.raises(InvalidSetpoint, match="not a finite number"):
        write_setpoint(point, value, actor=operator)


def test_write_setpoint_bit_needs_0_or_1(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="bit", bit=3, sensor=SensorFactory(minimum=0, maximum=5))

    with pytest.raises(InvalidSetpoint, match="takes 0 or 1"):
        write_setpoint(point, 2, actor=operator)


def test_write_setpoint_read_only_register(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32")
    point.register_type = "input"

    with pytest.raises(InvalidSetpoint, match="read-only input 100"):
        write_setpoint(point, 10, actor=operator)


def test_write_setpoint_out_of_type_range(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="int16", sensor=SensorFactory(minimum=0, maximum=100000))

    with pytest.raises(InvalidSetpoint, match="out of range for int16"):
        write_setpoint(point, 40000, actor=operator)


def test_write_setpoint_needs_permission(alpha, register_server, viewer):
    point = setpoint_point(register_server, data_type="float32")

    with pytest.raises(PermissionDenied, match="viewer"):
        write_setpoint(point, 10, actor=viewer)

    assert register_server.requests == []


def test_write_setpoint_unconfirmed_read_back(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=70000))

    with pytest.raises(SetpointError, match="reading it back failed .*not implemented"):
        write_setpoint(point, 65535, actor=operator)

    entry = AuditEntry.objects.get(action=AuditAction.SETPOINT_WRITTEN)
    assert entry.outcome == Outcome.FAILURE
    assert entry.detail["written"] == 65535
    assert entry.detail["previous"] == 0
    assert "reading it back failed" in entry.detail["error"]


def test_write_setpoint_device_unreachable(alpha, operator):
    device = DeviceFactory(port=free_port(), timeout=0.5)
    point = PointFactory(device=device, address=100, sensor=SensorFactory(minimum=0, maximum=90))

    with pytest.raises(SetpointError, match="was not written") as caught:
        write_setpoint(point, 10, actor=operator)

    assert not isinstance(caught.value, InvalidSetpoint)
    assert AuditEntry.objects.get(action=AuditAction.SETPOINT_WRITTEN).outcome == Outcome.FAILURE


def api_client_for(user):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', user)}")
    return client


def test_api_write_setpoint(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32", byte_order="CDAB")

    response = api_client_for(operator).post(f"/api/v1/points/{point.pk}/write/", {"value": 12.5}, format="json")

    assert response.status_code == 200, response.data
    assert response.data == {"value": 12.5, "written": 12.5, "read_back": 12.5}
    assert register_server.get("holding", 100, 2) == [0x0000, 0x4148]


def test_api_write_setpoint_by_admin(alpha, register_server):
    point = setpoint_point(register_server, data_type="float32")

    response = api_client_for(admin_of("alpha")).post(f"/api/v1/points/{point.pk}/write/", {"value": 20}, format="json")

    assert response.status_code == 200, response.data


def test_api_write_setpoint_by_viewer_is_denied(alpha, register_server, viewer):
    point = setpoint_point(register_server, data_type="float32")

    response = api_client_for(viewer).post(f"/api/v1/points/{point.pk}/write/", {"value": 12.5}, format="json")

    assert response.status_code == 403
    assert register_server.requests == []


def test_api_write_setpoint_outside_range(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32")

    response = api_client_for(operator).post(f"/api/v1/points/{point.pk}/write/", {"value": 95}, format="json")

    assert response.status_code == 400
    assert "outside the range" in response.data["value"][0]


def test_api_write_setpoint_missing_value(alpha, register_server, operator):
    point = setpoint_point(register_server, data_type="float32")

    response = api_client_for(operator).post(f"/api/v1/points/{point.pk}/write/", {}, format="json")

    assert response.status_code == 400
    assert "value" in response.data


def test_api_write_setpoint_device_unreachable(alpha, operator):
    device = DeviceFactory(port=free_port(), timeout=0.5)
    point = PointFactory(device=device, address=100, sensor=SensorFactory(minimum=0, maximum=90))

    response = api_client_for(operator).post(f"/api/v1/points/{point.pk}/write/", {"value": 10}, format="json")

    assert response.status_code == 502
    assert "was not written" in response.data["detail"]
