"""Quotas on devices, sensors, users and API request rate, through the API, the admin and profile imports."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.protocols.models import Device, Point
from apps.sensors.models import Sensor
from apps.tenants.models import Tenant
from apps.tenants.quotas import QuotaExceeded
from tests.accounts.conftest import create_user
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of
from tests.factories import DeviceFactory, SensorFactory, UnitFactory

DEVICE_BODY = {"name": "PLC 9", "host": "127.0.0.1", "port": 502, "unit_id": 1}

PROFILE = """\
profile: 1
name: Two-point controller
protocol: modbus_tcp
points:
  - key: supply_temp
    name: Supply temperature
    quantity: temperature
    unit: °C
    register_type: holding
    address: 0
    data_type: float32
  - key: return_temp
    name: Return temperature
    quantity: temperature
    unit: °C
    register_type: holding
    address: 2
    data_type: float32
"""


def test_device_over_quota_via_api_is_403(alpha_api, alpha_settings):
    DeviceFactory()
    alpha_settings(max_devices=1)

    response = alpha_api.post("/api/v1/devices/", DEVICE_BODY, format="json")

    assert response.status_code == 403
    assert response.data["detail"] == (
        "Quota max_devices exceeded: tenant 'alpha' may have at most 1 devices. "
        "Delete unused devices or ask the platform operator to raise max_devices."
    )
    assert Device.objects.count() == 1


def test_device_within_quota_is_created(alpha_api, alpha_settings):
    alpha_settings(max_devices=1)

    response = alpha_api.post("/api/v1/devices/", DEVICE_BODY, format="json")

    assert response.status_code == 201


def test_no_quota_means_no_limit(alpha_api):
    DeviceFactory.create_batch(3)

    response = alpha_api.post("/api/v1/devices/", DEVICE_BODY, format="json")

    assert response.status_code == 201
    assert Device.objects.count() == 4


def test_sensor_over_quota_via_api_is_403(alpha_api, alpha_settings):
    unit = UnitFactory()
    SensorFactory(unit=unit)
    alpha_settings(max_sensors=1)
    body = {"unit": unit.id, "name": "Return", "key": "return", "quantity": "temperature", "minimum": 0, "maximum": 100}

    response = alpha_api.post("/api/v1/sensors/", body, format="json")

    assert response.status_code == 403
    assert response.data["detail"] == (
        "Quota max_sensors exceeded: tenant 'alpha' may have at most 1 sensors. "
        "Delete unused sensors or ask the platform operator to raise max_sensors."
    )


def test_profile_import_over_sensor_quota_creates_nothing(alpha_api, alpha_settings):
    device = DeviceFactory()
    unit = UnitFactory()
    alpha_settings(max_sensors=1)

    response = alpha_api.post(f"/api/v1/devices/{device.pk}/profile/", {"unit": unit.pk, "profile": PROFILE},
                              format="json")

    assert response.status_code == 403
    assert response.data["detail"].startswith("Quota max_sensors exceeded: tenant 'alpha' may have at most 1 sensors.")
    assert "It has 0, and this request would add 2; nothing was created." in response.data["detail"]
    assert Sensor.objects.count() == 0
    assert Point.objects.count() == 0


def test_profile_import_counts_only_new_sensors(alpha_api, alpha_settings):
    device = DeviceFactory()
    unit = UnitFactory()
    SensorFactory(unit=unit, key="supply_temp")
    SensorFactory()
    alpha_settings(max_sensors=2)

    response = alpha_api.post(f"/api/v1/devices/{device.pk}/profile/", {"unit": unit.pk, "profile": PROFILE},
                              format="json")

    # supply_temp exists in the unit, so only return_temp would be new: one sensor, the single-row message.
    assert response.status_code == 403
    assert "may have at most 2 sensors" in response.data["detail"]
    assert "would add" not in response.data["detail"]
    assert Sensor.objects.count() == 2


def test_profile_update_within_quota_passes(alpha_api, alpha_settings):
    device = DeviceFactory()
    unit = UnitFactory()
    url = f"/api/v1/devices/{device.pk}/profile/"
    alpha_api.post(url, {"unit": unit.pk, "profile": PROFILE}, format="json")
    alpha_settings(max_sensors=2)

    # Applying the same profile again updates the two sensors and adds none.
    response = alpha_api.post(url, {"unit": unit.pk, "profile": PROFILE}, format="json")

    assert response.status_code == 200, response.data
    assert response.data["sensors_updated"] == 2


def test_api_key_over_user_quota_is_403(alpha_api, alpha_settings):
    alpha_settings(max_users=get_user_model().objects.filter(is_active=True).count())

    response = alpha_api.post("/api/v1/api-keys/", {"name": "historian", "role": "viewer"}, format="json")

    assert response.status_code == 403
    assert response.data["detail"].startswith("Quota max_users exceeded: tenant 'alpha' may have at most 1 active users.")
    assert not get_user_model().objects.filter(username__startswith="api-key-").exists()


def test_user_over_quota_in_admin_is_403(alpha_client, alpha_settings):
    alpha_settings(max_users=1)

    response = alpha_client.post("/admin/accounts/user/add/", {
        "username": "night-shift", "role": "operator", "usable_password": "true",
        "password1": "Night-shift-4711-boiler", "password2": "Night-shift-4711-boiler",
    })

    assert response.status_code == 403
    assert response.content.decode() == (
        "Quota max_users exceeded: tenant 'alpha' may have at most 1 active users. "
        "Delete unused active users or ask the platform operator to raise max_users."
    )
    assert not get_user_model().objects.filter(username="night-shift").exists()


def test_reactivating_user_over_quota_is_refused(alpha, alpha_settings):
    user = create_user(Role.VIEWER, username="former", is_active=False)
    alpha_settings(max_users=1)
    user.is_active = True

    with pytest.raises(QuotaExceeded, match="max_users"):
        user.save()


def test_inactive_users_do_not_count(alpha, alpha_settings):
    create_user(Role.VIEWER, username="former", is_active=False)
    alpha_settings(max_users=2)

    create_user(Role.OPERATOR, username="day-shift")

    assert get_user_model().objects.filter(is_active=True).count() == 2


def test_quota_of_other_tenant_does_not_apply(beta, alpha_settings):
    alpha_settings(max_devices=0)
    beta_api = APIClient(HTTP_HOST=TENANT_DOMAINS["beta"])
    beta_api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('beta', admin_of('beta'))}")

    response = beta_api.post("/api/v1/devices/", DEVICE_BODY, format="json")

    assert response.status_code == 201


def test_api_rate_limit_is_429_naming_the_quota(alpha_api, alpha_settings):
    alpha_settings(api_rate_limit="3/min")

    statuses = [alpha_api.get("/api/v1/sites/").status_code for _ in range(3)]
    limited = alpha_api.get("/api/v1/sites/")

    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.data["detail"].startswith(
        "Quota api_rate_limit exceeded: tenant 'alpha' allows 3/min API requests per user or API key. "
        "Expected available in "
    )
    assert 0 < int(limited["Retry-After"]) <= 60


def test_api_rate_limit_counts_each_user_apart(alpha_api, alpha_settings, api_as):
    alpha_settings(api_rate_limit="2/min")
    for _ in range(2):
        alpha_api.get("/api/v1/sites/")
    viewer = api_as("viewer")

    assert alpha_api.get("/api/v1/sites/").status_code == 429
    assert viewer.get("/api/v1/sites/").status_code == 200


def test_api_rate_limit_applies_to_api_keys(alpha_api, alpha_settings, api_as):
    key = alpha_api.post("/api/v1/api-keys/", {"name": "historian", "role": "viewer"}, format="json").data["key"]
    alpha_settings(api_rate_limit="1/min")
    machine = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    machine.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    viewer = api_as("viewer")

    first = machine.get("/api/v1/sites/")
    second = machine.get("/api/v1/sites/")

    assert first.status_code == 200
    assert second.status_code == 429
    assert viewer.get("/api/v1/sites/").status_code == 200


def test_api_rate_limit_counts_anonymous_requests_by_address(alpha, alpha_settings):
    alpha_settings(api_rate_limit="1/min")
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    wrong = {"username": "admin", "password": "not-the-password"}

    first = client.post("/api/v1/auth/token/", wrong, format="json")
    second = client.post("/api/v1/auth/token/", wrong, format="json")

    assert first.status_code == 401
    assert second.status_code == 429


@pytest.mark.parametrize("rate", ["600", "10/week", "0/min", "many/min", " 5/s"])
def test_invalid_rate_is_rejected(alpha, rate):
    alpha.api_rate_limit = rate

    with pytest.raises(ValidationError) as caught:
        alpha.full_clean()

    assert repr(rate) in caught.value.message_dict["api_rate_limit"][0]
    assert "'600/min'" in caught.value.message_dict["api_rate_limit"][0]


def test_quota_fields_in_platform_admin(alpha):
    tenant = Tenant.objects.get(schema_name="alpha")

    assert tenant.max_devices is None
    assert tenant.api_rate_limit == "600/min"
    assert tenant.retention_days is None


def test_quota_applies_in_schema_context(alpha, alpha_settings):
    # Management commands switch schemas with schema_context, which carries no Tenant row.
    SensorFactory()
    alpha_settings(max_sensors=1)

    with schema_context("alpha"), pytest.raises(QuotaExceeded, match="max_sensors"):
        SensorFactory()


def test_public_schema_has_no_quota(db):
    connection.set_schema_to_public()

    get_user_model().objects.create_user(username="platform-operator", password=None)

    assert get_user_model().objects.filter(username="platform-operator").exists()
