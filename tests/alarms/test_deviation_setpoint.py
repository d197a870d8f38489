"""Deviation rules evaluated again when only their setpoint sensor changes."""

from datetime import timedelta

from django.utils import timezone

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, AlarmRuleState
from apps.protocols.services import write_setpoint
from apps.sensors.quality import Quality
from apps.telemetry import latest
from apps.telemetry.models import Reading
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.conftest import register_server  # noqa: F401 (fixture)

from .conftest import at


def deviation_rule(make_rule, sensor, **fields):
    setpoint = SensorFactory(unit=sensor.unit, minimum=0, maximum=200)
    rule = make_rule(condition="deviation", limit=None, setpoint_sensor=setpoint, band=5.0, **fields)
    return rule, setpoint


def test_setpoint_change_alone_raises_deviation(sensor, make_rule, feed):
    rule, setpoint = deviation_rule(make_rule, sensor)
    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), 84.0))
    assert not Alarm.objects.exists()

    feed(setpoint, (at(2), 90.0))

    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.activated_at == at(2)
    assert alarm.activation_value == 84.0
    state = AlarmRuleState.objects.get(rule=rule)
    assert state.condition_active is True
    assert state.last_sample_time == at(2)
    assert state.last_value == 84.0


def test_setpoint_change_alone_clears_deviation(sensor, make_rule, feed):
    _rule, setpoint = deviation_rule(make_rule, sensor)
    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), 90.0))
    alarm = Alarm.objects.get()
    assert alarm.condition_active is True

    feed(setpoint, (at(2), 88.0))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == at(2)
    assert list(alarm.transitions.values_list("action", flat=True)) == [
        TransitionAction.ACTIVATE,
        TransitionAction.RETURN,
    ]


def test_late_setpoint_reading_changes_nothing(sensor, make_rule, feed):
    rule, setpoint = deviation_rule(make_rule, sensor)
    feed(setpoint, (at(10), 80.0))
    feed(sensor, (at(11), 84.0))

    # Older than the live setpoint, so it is history and not the setpoint now.
    feed(setpoint, (at(5), 95.0))

    assert not Alarm.objects.exists()
    assert AlarmRuleState.objects.get(rule=rule).last_sample_time == at(11)


def test_setpoint_change_keeps_on_delay(sensor, make_rule, feed):
    rule, setpoint = deviation_rule(make_rule, sensor, on_delay=10.0)
    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), 84.0))

    feed(setpoint, (at(2), 90.0))
    assert not Alarm.objects.exists()
    assert AlarmRuleState.objects.get(rule=rule).pending_since == at(2)
    feed(setpoint, (at(13), 90.5))

    alarm = Alarm.objects.get()
    assert alarm.condition_started_at == at(2)
    assert alarm.activated_at == at(13)


def test_setpoint_change_before_any_process_value(sensor, make_rule, feed):
    rule, setpoint = deviation_rule(make_rule, sensor)

    feed(setpoint, (at(0), 80.0))

    assert not Alarm.objects.exists()
    assert AlarmRuleState.objects.get(rule=rule).last_sample_time is None


def test_setpoint_change_with_bad_process_value(sensor, make_rule, feed):
    _rule, setpoint = deviation_rule(make_rule, sensor)
    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), None, Quality.BAD_COMM_LOST))

    feed(setpoint, (at(2), 150.0))

    assert not Alarm.objects.exists()


def test_late_process_reading_is_backfill(sensor, make_rule, feed):
    _rule, setpoint = deviation_rule(make_rule, sensor)
    feed(setpoint, (at(0), 80.0))
    feed(sensor, (at(1), 90.0))
    feed(setpoint, (at(10), 88.0))
    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED

    # Arrives late: the rule has been evaluated up to 10 s, so this cannot reactivate the alarm.
    feed(sensor, (at(5), 99.0))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == at(10)


def test_setpoint_write_raises_deviation(
    sensor, make_rule, feed, admin, register_server, django_capture_on_commit_callbacks
):
    _rule, setpoint = deviation_rule(make_rule, sensor)
    device = DeviceFactory(port=register_server.port, unit_id=1)
    point = PointFactory(device=device, sensor=setpoint, register_type="holding", address=100, data_type="float32")
    # The read-back reading carries the server clock's time, so the earlier readings must be older than now.
    now = timezone.now()
    feed(setpoint, (now - timedelta(seconds=2), 80.0))
    feed(sensor, (now - timedelta(seconds=1), 84.0))
    assert not Alarm.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        write_setpoint(point, 90.0, actor=admin)

    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.activation_value == 84.0
    assert latest.get_latest("alpha", [setpoint.id])[setpoint.id][1] == 90.0
    assert Reading.objects.filter(sensor=setpoint, value=90.0).count() == 1
