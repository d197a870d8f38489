from datetime import timedelta

import pytest
from django.utils import timezone

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, AlarmRuleState
from apps.alarms.services import acknowledge_alarm, shelve_alarm
from apps.alarms.timers import (
    activate_elapsed_on_delays,
    end_suppression,
    raise_stale_alarms,
    realarm_acknowledged_alarms,
    run_alarm_timers,
)
from apps.units.choices import UnitStatus

from .conftest import at


@pytest.fixture
def active_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0, realarm_after=600)
    feed(sensor, (at(0), 105.0))
    return Alarm.objects.get()


def test_expired_shelving_is_undone_by_timer(active_alarm, admin):
    shelve_alarm(active_alarm, actor=admin, until=timezone.now() + timedelta(minutes=5), comment="Known fault")

    counts = run_alarm_timers(timezone.now() + timedelta(minutes=6))

    alarm = Alarm.objects.get()
    assert counts["unshelved"] == 1
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.transitions.last().action == TransitionAction.SHELF_EXPIRED
    assert alarm.transitions.last().actor is None


def test_stale_rule_activates_then_clears(sensor, make_rule, feed):
    rule = make_rule(condition="stale", limit=None, stale_after=60)
    now = timezone.now()
    feed(sensor, (now - timedelta(seconds=90), 50.0))

    raised = raise_stale_alarms(now)
    raised_again = raise_stale_alarms(now + timedelta(seconds=5))
    feed(sensor, (now, 51.0))

    alarm = Alarm.objects.get(rule=rule)
    assert raised == 1
    assert raised_again == 0
    assert alarm.condition_started_at == now - timedelta(seconds=30)
    assert alarm.activated_at == now
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert alarm.returned_at == now


def test_stale_rule_with_fresh_data_stays_normal(sensor, make_rule, feed):
    make_rule(condition="stale", limit=None, stale_after=60)
    now = timezone.now()
    feed(sensor, (now - timedelta(seconds=30), 50.0))

    assert raise_stale_alarms(now) == 0
    assert Alarm.objects.count() == 0


def test_acknowledged_alarm_realarms_after_its_time(active_alarm, admin):
    acknowledge_alarm(active_alarm, actor=admin)
    acknowledged_at = Alarm.objects.get().acknowledged_at

    early = realarm_acknowledged_alarms(acknowledged_at + timedelta(seconds=599))
    due = realarm_acknowledged_alarms(acknowledged_at + timedelta(seconds=600))

    alarm = Alarm.objects.get()
    assert early == 0
    assert due == 1
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.acknowledged_at is None
    assert alarm.transitions.last().action == TransitionAction.REALARM


def test_rule_without_realarm_time_never_realarms(sensor, make_rule, feed, admin):
    make_rule(condition="hi", limit=100.0)
    feed(sensor, (at(0), 105.0))
    acknowledge_alarm(Alarm.objects.get(), actor=admin)

    assert realarm_acknowledged_alarms(timezone.now() + timedelta(days=30)) == 0
    assert Alarm.objects.get().state == AlarmState.ACTIVE_ACKNOWLEDGED


@pytest.mark.parametrize(
    ("still_active", "expected"), [(True, AlarmState.ACTIVE_UNACKNOWLEDGED), (False, AlarmState.NORMAL)]
)
def test_suppression_ends_with_maintenance(sensor, make_rule, feed, still_active, expected):
    make_rule(condition="hi", limit=100.0)
    sensor.unit.status = UnitStatus.MAINTENANCE
    sensor.unit.save(update_fields=["status"])
    feed(sensor, (at(0), 105.0))
    assert end_suppression() == 0
    if not still_active:
        Alarm.objects.update(condition_active=False)
    sensor.unit.status = UnitStatus.IN_SERVICE
    sensor.unit.save(update_fields=["status"])

    released = end_suppression()

    alarm = Alarm.objects.get()
    assert released == 1
    assert alarm.state == expected
    assert alarm.transitions.last().action == TransitionAction.UNSUPPRESS


def test_on_delay_elapses_without_new_reading(sensor, make_rule, feed):
    rule = make_rule(condition="hi", limit=80.0, on_delay=5.0)
    feed(sensor, (at(10), 85.0))

    early = activate_elapsed_on_delays(at(14))
    counts = run_alarm_timers(at(17))
    again = activate_elapsed_on_delays(at(30))

    alarm = Alarm.objects.get()
    state = AlarmRuleState.objects.get(rule=rule)
    assert early == 0
    assert counts["on_delay"] == 1
    assert again == 0
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.condition_started_at == at(10)
    assert alarm.activated_at == at(15)
    assert alarm.activation_value == 85.0
    assert state.condition_active is True
    assert state.pending_since is None


def test_on_delay_timer_then_reading_keeps_one_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=80.0, on_delay=5.0)
    feed(sensor, (at(10), 85.0))
    activate_elapsed_on_delays(at(16))

    feed(sensor, (at(20), 90.0))
    feed(sensor, (at(25), 70.0))

    alarm = Alarm.objects.get()
    assert [transition.action for transition in alarm.transitions.all()] == [
        TransitionAction.ACTIVATE,
        TransitionAction.RETURN,
    ]
    assert alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED


def test_on_delay_timer_skips_cleared_condition(sensor, make_rule, feed):
    make_rule(condition="hi", limit=80.0, on_delay=5.0)
    feed(sensor, (at(10), 85.0))
    feed(sensor, (at(12), 70.0))

    activated = activate_elapsed_on_delays(at(60))

    assert activated == 0
    assert not Alarm.objects.exists()
