from datetime import timedelta

import pytest
from django.utils import timezone

from apps.protocols.choices import DeviceStatus
from apps.protocols.models import Device
from apps.protocols.polling import poll_due_devices
from apps.protocols.simulator.demo import configure_demo_plant
from apps.protocols.simulator.plant import PLANT
from apps.sensors.models import Sensor
from apps.telemetry.models import Reading
from apps.telemetry.quality import Quality
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory

pytestmark = pytest.mark.slow


def test_poll_simulator_stores_every_point(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)

    summary = poll_due_devices()

    point_count = sum(len(unit.points) for unit in PLANT)
    assert summary.polled == len(PLANT)
    assert summary.failed == 0
    assert Reading.objects.count() == point_count
    assert Reading.objects.filter(quality=Quality.GOOD).count() == point_count
    assert set(Device.objects.values_list("status", flat=True)) == {DeviceStatus.ONLINE}


def test_poll_values_lie_in_sensor_ranges(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)

    poll_due_devices()

    for reading in Reading.objects.select_related("sensor"):
        sensor = reading.sensor
        assert sensor.minimum <= reading.value <= sensor.maximum, sensor.key


def test_poll_claims_device_once_per_interval(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator, poll_interval=60)

    first = poll_due_devices()
    second = poll_due_devices()

    assert first.polled == len(PLANT)
    assert second.polled == 0


def test_unreachable_device_goes_offline_with_backoff(alpha):
    device = DeviceFactory(port=free_port(), timeout=0.5, poll_interval=2)
    point = PointFactory(device=device)
    before = timezone.now()

    summary = poll_due_devices()

    device.refresh_from_db()
    assert summary.failed == 1
    assert device.status == DeviceStatus.OFFLINE
    assert str(device.port) in device.last_error
    assert device.consecutive_failures == 1
    assert device.error_count == 1
    assert device.next_poll_at >= before + timedelta(seconds=4)
    reading = Reading.objects.get(sensor=point.sensor)
    assert reading.quality == Quality.BAD_COMM_LOST
    assert reading.value is None


def test_backoff_grows_and_comm_lost_is_stored_once(alpha):
    device = DeviceFactory(port=free_port(), timeout=0.5, poll_interval=1)
    point = PointFactory(device=device)

    poll_due_devices()
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    before_second = timezone.now()
    poll_due_devices()

    device.refresh_from_db()
    assert device.consecutive_failures == 2
    assert device.next_poll_at >= before_second + timedelta(seconds=4)
    assert Reading.objects.filter(sensor=point.sensor).count() == 1


def test_exception_response_marks_only_that_point_bad(alpha, plant_simulator):
    device = DeviceFactory(port=plant_simulator, unit_id=1)
    good = PointFactory(device=device, register_type="holding", address=0, data_type="float32",
                        sensor=SensorFactory(minimum=-50, maximum=150))
    missing = PointFactory(device=device, register_type="holding", address=5000, data_type="uint16",
                           sensor=SensorFactory(minimum=None, maximum=None))

    summary = poll_due_devices()

    device.refresh_from_db()
    assert summary.failed == 0
    assert device.status == DeviceStatus.ONLINE
    assert Reading.objects.get(sensor=good.sensor).quality == Quality.GOOD
    bad = Reading.objects.get(sensor=missing.sensor)
    assert bad.quality == Quality.BAD_DEVICE_EXCEPTION
    assert bad.value is None


def test_device_recovers_after_outage(alpha, plant_simulator):
    device = DeviceFactory(port=free_port(), timeout=0.5, unit_id=1)
    PointFactory(device=device, sensor=SensorFactory(minimum=-50, maximum=150))
    poll_due_devices()

    Device.objects.filter(pk=device.pk).update(port=plant_simulator, next_poll_at=timezone.now())
    poll_due_devices()

    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert device.consecutive_failures == 0
    assert device.last_error == ""


def test_disabled_device_is_not_polled(alpha, plant_simulator):
    DeviceFactory(port=plant_simulator, enabled=False)

    assert poll_due_devices().polled == 0


def test_demo_plant_setup_is_idempotent(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)
    configure_demo_plant(port=plant_simulator)

    assert Device.objects.count() == len(PLANT)
    assert Sensor.objects.count() == sum(len(unit.points) for unit in PLANT)
