"""Quotas on the bulk paths: bulk_create, bulk_update and update() of devices, sensors and users, and imports."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import transaction

from apps.accounts.choices import Role
from apps.protocols.models import Device, Point
from apps.sensors.models import Sensor
from apps.tenants.quotas import QuotaExceeded
from tests.accounts.conftest import ROLE_PASSWORD
from tests.factories import DeviceFactory, SensorFactory, UnitFactory
from tests.tenants.test_quotas import DEVICE_BODY, PROFILE


def new_sensors(unit, count):
    return [Sensor(unit=unit, name=f"Bulk {index}", key=f"bulk_{index}", quantity="temperature")
            for index in range(count)]


def new_users(count, **fields):
    return [get_user_model()(username=f"bulk-{index}", role=Role.VIEWER, **fields) for index in range(count)]


def active_users():
    return get_user_model().objects.filter(is_active=True).count()


def test_sensor_bulk_create_over_quota_creates_none(alpha, alpha_settings):
    unit = UnitFactory()
    SensorFactory(unit=unit)
    alpha_settings(max_sensors=2)

    with pytest.raises(QuotaExceeded) as caught, transaction.atomic():
        Sensor.objects.bulk_create(new_sensors(unit, 2))

    assert str(caught.value) == (
        "Quota max_sensors exceeded: tenant 'alpha' may have at most 2 sensors. "
        "It has 1, and this request would add 2; nothing was created. "
        "Delete unused sensors or ask the platform operator to raise max_sensors."
    )
    assert Sensor.objects.count() == 1


def test_sensor_bulk_create_within_quota_passes(alpha, alpha_settings):
    unit = UnitFactory()
    alpha_settings(max_sensors=3)

    created = Sensor.objects.bulk_create(new_sensors(unit, 3))

    assert len(created) == 3
    assert Sensor.objects.count() == 3


def test_device_bulk_create_over_quota_creates_none(alpha, alpha_settings):
    alpha_settings(max_devices=2)
    devices = [Device(name=f"PLC {index}", host="127.0.0.1", port=502, unit_id=1) for index in range(3)]

    with pytest.raises(QuotaExceeded) as caught:
        Device.objects.bulk_create(devices)

    assert str(caught.value).startswith("Quota max_devices exceeded: tenant 'alpha' may have at most 2 devices. ")
    assert "would add 3" in str(caught.value)
    assert Device.objects.count() == 0


def test_device_queryset_filters_still_work(alpha, alpha_settings):
    # The quota check replaces the device queryset's base class; its own methods stay.
    DeviceFactory()
    alpha_settings(max_devices=5)

    assert Device.objects.subscribed().count() == 0
    assert Device.objects.filter(host="127.0.0.1").count() == 1


def test_user_bulk_create_over_quota_creates_none(alpha, alpha_settings):
    alpha_settings(max_users=active_users() + 1)

    with pytest.raises(QuotaExceeded) as caught:
        get_user_model().objects.bulk_create(new_users(2))

    assert "max_users" in str(caught.value)
    assert get_user_model().objects.filter(username__startswith="bulk-").count() == 0


def test_user_bulk_create_inactive_users_do_not_count(alpha, alpha_settings):
    alpha_settings(max_users=active_users())

    get_user_model().objects.bulk_create(new_users(2, is_active=False))

    assert get_user_model().objects.filter(username__startswith="bulk-").count() == 2


def test_user_bulk_update_reactivation_over_quota(alpha, alpha_settings):
    users = get_user_model().objects.bulk_create(new_users(2, is_active=False))
    alpha_settings(max_users=active_users() + 1)
    for user in users:
        user.is_active = True

    with pytest.raises(QuotaExceeded):
        get_user_model().objects.bulk_update(users, ["is_active"])

    assert get_user_model().objects.filter(username__startswith="bulk-", is_active=True).count() == 0


def test_user_bulk_update_other_fields_passes(alpha, alpha_settings):
    users = get_user_model().objects.bulk_create(new_users(2))
    alpha_settings(max_users=active_users())
    for user in users:
        user.first_name = "Renamed"

    get_user_model().objects.bulk_update(users, ["first_name"])

    assert get_user_model().objects.filter(first_name="Renamed").count() == 2


def test_user_update_reactivation_over_quota(alpha, alpha_settings):
    get_user_model().objects.bulk_create(new_users(2, is_active=False))
    alpha_settings(max_users=active_users() + 1)

    with pytest.raises(QuotaExceeded):
        get_user_model().objects.filter(username__startswith="bulk-").update(is_active=True)

    assert get_user_model().objects.filter(username__startswith="bulk-", is_active=True).count() == 0


def test_user_update_deactivation_passes(alpha, alpha_settings):
    get_user_model().objects.bulk_create(new_users(2))
    alpha_settings(max_users=1)

    changed = get_user_model().objects.filter(username__startswith="bulk-").update(is_active=False)

    assert changed == 2


def test_create_user_over_quota_is_rejected(alpha, alpha_settings):
    alpha_settings(max_users=active_users())

    with pytest.raises(QuotaExceeded):
        get_user_model().objects.create_user(username="one-too-many", password=ROLE_PASSWORD)


def test_profile_command_over_sensor_quota_creates_nothing(alpha, alpha_settings, tmp_path):
    device = DeviceFactory()
    unit = UnitFactory()
    alpha_settings(max_sensors=1)
    profile = tmp_path / "controller.yaml"
    profile.write_text(PROFILE, encoding="utf-8")

    with pytest.raises(CommandError) as caught:
        call_command("device_profile", "import", str(profile), "--schema", "alpha",
                     "--device", str(device.pk), "--unit", str(unit.pk))

    assert "Quota max_sensors exceeded: tenant 'alpha' may have at most 1 sensors." in str(caught.value)
    assert Sensor.objects.count() == 0
    assert Point.objects.count() == 0


def test_api_list_body_creates_no_devices(alpha_api, alpha_settings):
    # The REST API has no batch create: a list body is rejected before any quota or row is touched.
    alpha_settings(max_devices=1)

    response = alpha_api.post("/api/v1/devices/", [DEVICE_BODY, DEVICE_BODY], format="json")

    assert response.status_code == 400
    assert Device.objects.count() == 0
