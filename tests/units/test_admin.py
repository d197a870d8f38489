import pytest
from django.test import Client

from apps.tenants.services import ensure_public_tenant
from tests.factories import PointFactory

TENANT_ADMIN_PAGES = [
    "/admin/",
    "/admin/units/site/",
    "/admin/units/site/add/",
    "/admin/units/unit/",
    "/admin/units/unit/add/",
    "/admin/sensors/sensor/",
    "/admin/sensors/sensor/add/",
    "/admin/protocols/device/",
    "/admin/protocols/device/add/",
    "/admin/accounts/user/",
]


@pytest.mark.parametrize("path", TENANT_ADMIN_PAGES)
def test_tenant_admin_page_renders(alpha_client, path):
    response = alpha_client.get(path)

    assert response.status_code == 200, path


def test_device_admin_shows_points_inline(alpha_client):
    point = PointFactory(address=42)

    response = alpha_client.get(f"/admin/protocols/device/{point.device_id}/change/")

    assert response.status_code == 200
    assert 'name="points-0-address"' in response.text
    assert 'value="42"' in response.text


def test_device_admin_rejects_invalid_point_naming_field(alpha_client):
    point = PointFactory()
    device = point.device
    form = {
        "name": device.name, "protocol": "modbus_tcp", "host": device.host, "port": device.port,
        "unit_id": device.unit_id, "poll_interval": device.poll_interval, "timeout": device.timeout,
        "enabled": "on",
        "points-TOTAL_FORMS": "1", "points-INITIAL_FORMS": "1", "points-MIN_NUM_FORMS": "0",
        "points-MAX_NUM_FORMS": "1000",
        "points-0-id": point.id, "points-0-device": device.id, "points-0-sensor": point.sensor_id,
        "points-0-register_type": "coil", "points-0-address": "3", "points-0-data_type": "float32",
        "points-0-byte_order": "ABCD", "points-0-bit": "", "points-0-scale": "1", "points-0-offset": "0",
        "points-0-enabled": "on",
    }

    response = alpha_client.post(f"/admin/protocols/device/{device.id}/change/", form)

    assert response.status_code == 200
    assert "use &#x27;bool&#x27; for coils" in response.text
    point.refresh_from_db()
    assert point.register_type == "holding"


def test_platform_admin_on_public_domain(db):
    ensure_public_tenant("platform.localhost")

    response = Client(HTTP_HOST="platform.localhost").get("/admin/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_platform_domain_cannot_take_tenant_domain(db):
    with pytest.raises(ValueError, match="alpha.localhost"):
        ensure_public_tenant("alpha.localhost")
