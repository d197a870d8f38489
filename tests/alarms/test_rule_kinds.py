"""Rate-of-change, deviation and device-offline rules, evaluated through ingest like every reading."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.alarms.choices import AlarmState, Condition
from apps.alarms.models import Alarm, AlarmRule
from apps.protocols.choices import DeviceStatus
from apps.protocols.models import Device, Point
from apps.protocols.polling import poll_due_devices
from apps.protocols.simulator.demo import configure_demo_plant
from apps.sensors.quality import Quality
from tests.conftest import free_port
from tests.factories import SensorFactory

from .conftest import at


def test_rate_per_minute_alarms_and_clears_with_deadband(sensor, make_rule, feed):
    make_rule(condition="roc", limit=10.0, rate_per="minute", rate_window=60.0, deadband=2.0)

    feed(sensor, (at(0), 50.0))
    feed(sensor, (at(30), 52.0))
    feed(sensor, (at(60), 54.0))
    assert not Alarm.objects.exists()

    # 52 -> 70 over 60 s is 18 units per minute.
    feed(sensor, (at(90), 70.0))
    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.activated_at == at(90)

    # 70 -> 79 over 60 s is 9 per minute: under the limit but inside the deadband of 2.
    feed(sensor, (at(150), 79.0))
    alarm.refresh_from_db()
    assert alarm.condition_active

    # 79 -> 80 over 30 s is 2 per minute, below 10 - 2.
    feed(sensor, (at(180), 80.0))
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == at(180)


def test_rate_per_second_detects_fall(sensor, make_rule, feed):
    make_rule(condition="roc", limit=1.0, rate_per="second", rate_window=10.0)

    feed(sensor, (at(0), 100.0), (at(5), 99.0))
    assert not Alarm.objects.exists()
    feed(sensor, (at(10), 80.0))

    alarm = Alarm.objects.get()
    assert alarm.activation_value == 80.0
    assert alarm.activated_at == at(10)


def test_rate_ignores_bad_quality_readings(sensor, make_rule, feed):
    make_rule(condition="roc", limit=1.0, rate_window=10.0)

    feed(sensor, (at(0), 100.0))
    feed(sensor, (at(2), None, Quality.BAD_COMM_LOST))
    feed(sensor, (at(4), 101.0))

    assert not Alarm.objects.exists()


def test_rate_rule_requires_limit_and_window(sensor):
    rule = AlarmRule(sensor=sensor, condition="roc", limit=None, rate_window=0)

    with pytest.raises(ValidationError) as error:
        rule.clean()

    assert set(error.value.message_dict) == {"limit", "rate_window"}


def test_deviation_from_fixed_setpoint_with_on_delay(sensor, make_rule, feed):
    make_rule(condition="deviation", limit=None, setpoint=100.0, band=5.0, on_delay=10.0)

    feed(sensor, (at(0), 103.0))
    feed(sensor, (at(2), 106.0))
    feed(sensor, (at(8), 94.0))
    assert not Alarm.objects.exists()
    feed(sensor, (at(12), 96.0))
    assert not Alarm.objects.exists()

    feed(sensor, (at(13), 107.0))
    feed(sensor, (at(23), 106.0))

    alarm = Alarm.objects.get()
    assert alarm.condition_started_at == at(13)
    assert alarm.activated_at == at(23)


def test_deviation_follows_live_setpoint_sensor(sensor, make_rule, feed):
    setpoint = SensorFactory(unit=sensor.unit)
    make_rule(condition="deviation", limit=None, setpoint_sensor=setpoint, band=5.0)

    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), 90.0))
    alarm = Alarm.objects.get()
    assert alarm.condition_active

    feed(setpoint, (at(2), 88.0))
    feed(sensor, (at(3), 90.0))
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED


def test_deviation_without_setpoint_value_is_not_evaluated(sensor, make_rule, feed):
    setpoint = SensorFactory(unit=sensor.unit)
    make_rule(condition="deviation", limit=None, setpoint_sensor=setpoint, band=5.0)

    feed(sensor, (at(0), 190.0))

    assert not Alarm.objects.exists()


def test_deviation_rule_needs_exactly_one_setpoint(sensor):
    other = SensorFactory(unit=sensor.unit)
    both = AlarmRule(sensor=sensor, condition="deviation", setpoint=1.0, setpoint_sensor=other, band=2.0)
    itself = AlarmRule(sensor=sensor, condition="deviation", setpoint_sensor=sensor, band=2.0)

    with pytest.raises(ValidationError) as both_error:
        both.clean()
    with pytest.raises(ValidationError) as itself_error:
        itself.clean()

    assert "setpoint" in both_error.value.message_dict
    assert "setpoint_sensor" in itself_error.value.message_dict


def test_device_offline_from_comm_lost_reading_fires_once(sensor, make_rule, feed):
    make_rule(condition="device_offline", limit=None, priority="critical")

    feed(sensor, (at(0), 50.0))
    feed(sensor, (at(5), None, Quality.BAD_COMM_LOST))
    # A retained offline message delivered again after a reconnect is the same reading.
    feed(sensor, (at(5), None, Quality.BAD_COMM_LOST))
    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.activated_at == at(5)

    feed(sensor, (at(9), None, Quality.BAD_DEVICE_EXCEPTION))
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED


@pytest.mark.slow
def test_device_offline_follows_poller_status(alpha, plant_simulator, django_capture_on_commit_callbacks):
    configure_demo_plant(port=plant_simulator)
    device = Device.objects.order_by("pk").first()
    point = Point.objects.filter(device=device).order_by("pk").first()
    rule = AlarmRule.objects.create(sensor_id=point.sensor_id, condition=Condition.DEVICE_OFFLINE)

    def poll():
        Device.objects.update(next_poll_at=timezone.now() - timedelta(seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            poll_due_devices()

    poll()
    assert not Alarm.objects.filter(rule=rule).exists()

    Device.objects.filter(pk=device.pk).update(port=free_port(), timeout=0.5)
    poll()
    device.refresh_from_db()
    alarm = Alarm.objects.get(rule=rule)
    assert device.status == DeviceStatus.OFFLINE
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED

    Device.objects.filter(pk=device.pk).update(port=plant_simulator)
    poll()
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert Alarm.objects.filter(rule=rule).count() == 1


def test_rate_alarm_clears_after_reading_gap(sensor, make_rule, feed):
    make_rule(condition="roc", limit=1.0, rate_window=10.0)
    feed(sensor, (at(0), 100.0))
    feed(sensor, (at(5), 120.0))
    alarm = Alarm.objects.get()

    # 60 s later the value has barely moved: 1 unit over 60 s is far below the limit.
    feed(sensor, (at(65), 121.0))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == at(65)
