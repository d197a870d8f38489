import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, AlarmRuleState, AlarmTransition
from apps.alarms.services import acknowledge_alarm
from apps.sensors.quality import Quality
from apps.telemetry import latest
from apps.telemetry.models import Reading
from apps.units.choices import UnitStatus

from .conftest import at


@pytest.fixture
def alarm_pushes(sensor):
    """Collect the alarm messages sent to the sensor's unit group."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    group = f"alpha.unit.{sensor.unit_id}"
    async_to_sync(layer.group_add)(group, channel)

    async def collect():
        messages = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=0.3)
            except TimeoutError:
                return messages
            if message["type"] == "alarm.update":
                messages.append(message["alarm"])

    yield lambda: async_to_sync(collect)()
    async_to_sync(layer.group_discard)(group, channel)


def actions_of(alarm):
    return list(alarm.transitions.values_list("action", flat=True))


def test_new_occurrence_after_acknowledged_return(
    sensor, make_rule, feed, admin, alarm_pushes, django_capture_on_commit_callbacks
):
    make_rule(condition="hi", limit=100.0)

    feed(sensor, (at(0), 105.0))
    first = Alarm.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        acknowledge_alarm(first, actor=admin, comment="Checked the burner")
    feed(sensor, (at(10), 90.0))
    feed(sensor, (at(20), 110.0))

    first.refresh_from_db()
    second = Alarm.objects.exclude(pk=first.pk).get()
    assert Alarm.objects.count() == 2
    assert first.state == AlarmState.NORMAL
    assert first.acknowledged_by == admin
    assert first.acknowledged_at is not None
    assert first.activated_at == at(0)
    assert first.returned_at == at(10)
    assert first.closed_at == at(10)
    assert actions_of(first) == [TransitionAction.ACTIVATE, TransitionAction.ACKNOWLEDGE, TransitionAction.RETURN]
    assert first.transitions.get(action=TransitionAction.ACKNOWLEDGE).comment == "Checked the burner"
    assert second.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert second.acknowledged_at is None
    assert second.acknowledged_by is None
    assert second.activated_at == at(20)
    assert second.activation_value == 110.0
    assert list(Alarm.objects.active()) == [second]
    pushed = alarm_pushes()
    assert [(message["id"], message["state"]) for message in pushed] == [
        (first.pk, AlarmState.ACTIVE_UNACKNOWLEDGED),
        (first.pk, AlarmState.ACTIVE_ACKNOWLEDGED),
        (first.pk, AlarmState.NORMAL),
        (second.pk, AlarmState.ACTIVE_UNACKNOWLEDGED),
    ]


ON_DELAY_SAMPLES = [(0, 85.0), (2, 86.0), (4, 79.0), (10, 85.0), (12, 86.0), (16, 87.0)]


@pytest.mark.parametrize("one_message_each", [True, False], ids=["one message each", "one batch"])
def test_on_delay_raises_only_held_excursion(sensor, make_rule, feed, one_message_each):
    make_rule(condition="hi", limit=80.0, on_delay=5.0)

    if one_message_each:
        for second, value in ON_DELAY_SAMPLES[:3]:
            feed(sensor, (at(second), value))
        assert Alarm.objects.count() == 0
        assert AlarmTransition.objects.count() == 0
        for second, value in ON_DELAY_SAMPLES[3:]:
            feed(sensor, (at(second), value))
    else:
        feed(sensor, *[(at(second), value) for second, value in ON_DELAY_SAMPLES])

    alarm = Alarm.objects.get()
    assert alarm.activated_at == at(16)
    assert alarm.condition_started_at == at(10)
    assert alarm.activation_value == 87.0
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert actions_of(alarm) == [TransitionAction.ACTIVATE]
    assert alarm.transitions.get().time == at(16)


def test_on_delay_pending_state_survives_between_batches(sensor, make_rule, feed):
    rule = make_rule(condition="hi", limit=80.0, on_delay=5.0)

    feed(sensor, (at(10), 85.0))
    state = AlarmRuleState.objects.get(rule=rule)

    assert state.pending_since == at(10)
    assert state.condition_active is False
    assert state.last_sample_time == at(10)
    assert Alarm.objects.count() == 0


def test_repeated_message_raises_no_second_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=11.5)
    messages = [(at(0), 10.0), (at(20), 12.0), (at(10), 11.0), (at(20), 12.0)]

    results = [feed(sensor, message) for message in messages]

    alarm = Alarm.objects.get()
    assert alarm.activated_at == at(20)
    assert actions_of(alarm) == [TransitionAction.ACTIVATE]
    assert results[3].duplicates == 1
    assert results[3].accepted == 0
    history = list(Reading.objects.filter(sensor=sensor).order_by("time").values_list("value", flat=True))
    assert history == [10.0, 11.0, 12.0]


def test_backlog_excursion_is_backfilled_not_annunciated(sensor, make_rule, feed, alarm_pushes):
    make_rule(condition="hi", limit=90.0)
    noon = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
    feed(sensor, (noon, 55.0))
    backlog_start = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    backlog = [(backlog_start + timedelta(minutes=minute), 50.0) for minute in range(120)]
    backlog[60] = (datetime(2026, 1, 5, 11, 0, tzinfo=timezone.utc), 95.0)

    result = feed(sensor, *backlog)

    alarm = Alarm.objects.get()
    assert result.accepted == 120
    assert alarm.backfilled is True
    assert alarm.state == AlarmState.NORMAL
    assert alarm.condition_active is False
    assert alarm.activated_at == datetime(2026, 1, 5, 11, 0, tzinfo=timezone.utc)
    assert alarm.returned_at == datetime(2026, 1, 5, 11, 1, tzinfo=timezone.utc)
    assert alarm.activation_value == 95.0
    assert actions_of(alarm) == [TransitionAction.BACKFILL]
    assert Alarm.objects.active().count() == 0
    assert latest.get_latest("alpha", [sensor.id])[sensor.id][1] == 55.0
    assert alarm_pushes() == []


def test_backlog_excursion_cleared_by_later_reading(sensor, make_rule, feed):
    make_rule(condition="hi", limit=90.0)
    feed(sensor, (at(600), 50.0))

    feed(sensor, (at(0), 50.0), (at(60), 95.0))

    alarm = Alarm.objects.get()
    assert alarm.backfilled is True
    assert alarm.activated_at == at(60)
    assert alarm.returned_at == at(600)


def test_backlog_inside_live_excursion_adds_nothing(sensor, make_rule, feed):
    make_rule(condition="hi", limit=90.0)
    feed(sensor, (at(0), 95.0))
    feed(sensor, (at(20), 96.0))

    feed(sensor, (at(10), 97.0))

    alarm = Alarm.objects.get()
    assert alarm.backfilled is False
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_deadband_delays_return_to_normal(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0, deadband=5.0)

    feed(sensor, (at(0), 100.0))
    feed(sensor, (at(1), 96.0))
    alarm = Alarm.objects.get()
    assert alarm.condition_active is True
    feed(sensor, (at(2), 94.9))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == at(2)


def test_off_delay_holds_alarm_through_short_dip(sensor, make_rule, feed):
    make_rule(condition="lo", limit=20.0, off_delay=10.0)

    feed(sensor, (at(0), 15.0), (at(5), 25.0), (at(8), 18.0), (at(12), 25.0), (at(21), 26.0))
    alarm = Alarm.objects.get()
    assert alarm.condition_active is True
    feed(sensor, (at(22), 26.0))

    alarm.refresh_from_db()
    assert alarm.condition_active is False
    assert alarm.returned_at == at(22)


def test_rtn_unacknowledged_reactivates_same_occurrence(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0)

    feed(sensor, (at(0), 105.0), (at(10), 90.0), (at(20), 106.0))

    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.returned_at is None
    assert actions_of(alarm) == [TransitionAction.ACTIVATE, TransitionAction.RETURN, TransitionAction.ACTIVATE]


def test_bad_quality_alarm_fires_once(sensor, make_rule, feed):
    make_rule(condition="bad_quality")

    feed(sensor, (at(0), 50.0, Quality.GOOD))
    feed(sensor, (at(1), 51.0, Quality.UNCERTAIN))
    feed(sensor, (at(2), None, Quality.BAD))
    feed(sensor, (at(3), None, Quality.BAD_COMM_LOST))

    alarm = Alarm.objects.get()
    assert alarm.activated_at == at(2)
    assert actions_of(alarm) == [TransitionAction.ACTIVATE]


def test_limit_rule_keeps_state_through_bad_quality(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0)

    feed(sensor, (at(0), 105.0), (at(1), None, Quality.BAD_COMM_LOST))

    assert Alarm.objects.get().condition_active is True


def test_digital_state_alarm(sensor, make_rule, feed):
    make_rule(condition="digital", limit=None, alarm_state_value=1)

    feed(sensor, (at(0), 0.0), (at(1), 1.0), (at(2), 0.0))

    alarm = Alarm.objects.get()
    assert alarm.activated_at == at(1)
    assert alarm.returned_at == at(2)


def test_unit_in_maintenance_suppresses_new_alarm(sensor, make_rule, feed, alarm_pushes):
    make_rule(condition="hi", limit=100.0)
    sensor.unit.status = UnitStatus.MAINTENANCE
    sensor.unit.save(update_fields=["status"])

    feed(sensor, (at(0), 105.0))
    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.SUPPRESSED
    assert Alarm.objects.annunciated().count() == 0
    feed(sensor, (at(10), 90.0))

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.NORMAL
    assert actions_of(alarm) == [TransitionAction.SUPPRESS, TransitionAction.RETURN]
    assert alarm_pushes() == []


def test_disabled_and_out_of_service_rules_are_skipped(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0, enabled=False)
    make_rule(condition="hihi", limit=110.0, in_service=False)

    feed(sensor, (at(0), 120.0))

    assert Alarm.objects.count() == 0


def test_rules_of_other_sensors_are_not_evaluated(sensor, make_rule, feed):
    from tests.factories import SensorFactory

    other = SensorFactory()
    make_rule(sensor=other, condition="hi", limit=10.0)

    feed(sensor, (at(0), 120.0))

    assert Alarm.objects.count() == 0


def test_new_rule_first_batch_backfills_old_excursion(sensor, make_rule, feed, alarm_pushes):
    feed(sensor, (at(0), 50.0), (at(3600), 52.0))
    rule = make_rule(condition="hi", limit=90.0)

    # A backlog around the live value: the excursion at 1800 s predates the rule's first batch.
    feed(sensor, (at(1800), 95.0), (at(1900), 60.0), (at(3700), 55.0))

    alarm = Alarm.objects.get(rule=rule)
    assert alarm.backfilled is True
    assert alarm.state == AlarmState.NORMAL
    assert alarm.activated_at == at(1800)
    assert alarm.returned_at == at(1900)
    assert alarm_pushes() == []
    assert AlarmRuleState.objects.get(rule=rule).last_sample_time == at(3700)


def test_new_rule_first_batch_raises_current_excursion(sensor, make_rule, feed):
    feed(sensor, (at(0), 50.0))
    rule = make_rule(condition="hi", limit=90.0)

    feed(sensor, (at(10), 95.0))

    alarm = Alarm.objects.get(rule=rule)
    assert alarm.backfilled is False
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
