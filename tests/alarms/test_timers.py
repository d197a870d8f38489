from datetime import timedelta

import pytest
from django.utils import timezone

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm
from apps.alarms.services import acknowledge_alarm, shelve_alarm
from apps.alarms.timers import end_suppression, raise_stale_alarms, realarm_acknowledged_alarms, run_alarm_timers
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
