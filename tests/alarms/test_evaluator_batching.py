"""Batched alarm changes of the evaluator: many rules in one batch, and an operator acting during an evaluation."""

import threading
from datetime import timedelta

from django.db import connection
from django_tenants.utils import schema_context

from apps.alarms import changes
from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.evaluator import evaluate_readings
from apps.alarms.models import Alarm, AlarmRule, AlarmRuleState, NotificationDelivery
from apps.alarms.notifications import create_notification_target
from apps.alarms.services import acknowledge_alarm
from apps.sensors.samples import Sample
from tests.factories import SensorFactory

from .conftest import at
from .test_evaluator import alarm_pushes  # noqa: F401 (fixture)


def actions_of(alarm):
    return list(alarm.transitions.values_list("action", flat=True))


def test_one_batch_changes_many_rules(sensor, make_rule, feed, admin, alarm_pushes):
    create_notification_target(actor=admin, name="Control room", kind="email", email="cr@example.com", min_priority="high")
    other = SensorFactory(unit=sensor.unit, minimum=0, maximum=200)
    high = make_rule(condition="hi", limit=100.0, priority="high")
    low = AlarmRule.objects.create(sensor=other, condition="lo", limit=20.0, priority="low")

    # One ingest call: the HI rule activates, returns and activates again; the LO rule activates and returns.
    samples = [(at(0), 105.0), (at(1), 90.0), (at(2), 106.0)]
    feed(sensor, *samples)
    feed(other, (at(0), 10.0), (at(1), 30.0))

    high_alarm = Alarm.objects.get(rule=high)
    low_alarm = Alarm.objects.get(rule=low)
    assert high_alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert high_alarm.activated_at == at(0)
    assert high_alarm.returned_at is None
    assert actions_of(high_alarm) == [TransitionAction.ACTIVATE, TransitionAction.RETURN, TransitionAction.ACTIVATE]
    assert [t.time for t in high_alarm.transitions.all()] == [at(0), at(1), at(2)]
    assert low_alarm.state == AlarmState.RETURNED_UNACKNOWLEDGED
    assert low_alarm.returned_at == at(1)
    assert actions_of(low_alarm) == [TransitionAction.ACTIVATE, TransitionAction.RETURN]
    # The target's minimum priority is high: the low alarm gets no delivery, the high alarm one per annunciation.
    assert NotificationDelivery.objects.filter(alarm=high_alarm).count() == 2
    assert not NotificationDelivery.objects.filter(alarm=low_alarm).exists()
    pushed = [(message["id"], message["state"]) for message in alarm_pushes()]
    assert pushed == [
        (high_alarm.pk, AlarmState.ACTIVE_UNACKNOWLEDGED),
        (high_alarm.pk, AlarmState.RETURNED_UNACKNOWLEDGED),
        (high_alarm.pk, AlarmState.ACTIVE_UNACKNOWLEDGED),
        (low_alarm.pk, AlarmState.ACTIVE_UNACKNOWLEDGED),
        (low_alarm.pk, AlarmState.RETURNED_UNACKNOWLEDGED),
    ]
    assert AlarmRuleState.objects.get(rule=high).last_sample_time == at(2)
    assert AlarmRuleState.objects.get(rule=low).last_value == 30.0


def test_closed_and_new_occurrence_in_one_batch(sensor, make_rule, feed, admin):
    make_rule(condition="hi", limit=100.0)
    feed(sensor, (at(0), 105.0))
    first = Alarm.objects.get()
    acknowledge_alarm(first, actor=admin)

    feed(sensor, (at(10), 90.0), (at(20), 110.0))

    first.refresh_from_db()
    second = Alarm.objects.exclude(pk=first.pk).get()
    assert first.state == AlarmState.NORMAL
    assert first.closed_at == at(10)
    assert second.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert second.activated_at == at(20)
    assert actions_of(second) == [TransitionAction.ACTIVATE]


def test_acknowledgement_during_evaluation_is_kept(committed_alarm, django_db_blocker, monkeypatch):
    alarm, users = committed_alarm
    operator = users[0]
    with django_db_blocker.unblock(), schema_context("alpha"):
        sensor_id = AlarmRule.objects.get(pk=alarm.rule_id).sensor_id
        AlarmRuleState.objects.create(rule_id=alarm.rule_id, condition_active=True, last_sample_time=alarm.activated_at)

    def acknowledge_in_other_connection():
        try:
            with schema_context("alpha"):
                acknowledge_alarm(alarm, actor=operator, comment="Seen")
        finally:
            connection.close()

    real_update = changes.update_from_values

    def acknowledge_then_update(*args, **kwargs):
        # The evaluator has read the alarm as active and unacknowledged; the operator commits before its UPDATE.
        thread = threading.Thread(target=acknowledge_in_other_connection)
        thread.start()
        thread.join(timeout=10)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(changes, "update_from_values", acknowledge_then_update)
    returned_at = alarm.activated_at + timedelta(seconds=5)
    with django_db_blocker.unblock():
        evaluate_readings("alpha", [Sample(sensor_id, returned_at, 90.0)], {sensor_id})
        with schema_context("alpha"):
            stored = Alarm.objects.select_related("acknowledged_by").get(pk=alarm.pk)
            actions = actions_of(stored)
            occurrences = Alarm.objects.filter(rule_id=alarm.rule_id).count()
            state = AlarmRuleState.objects.get(rule_id=alarm.rule_id)

    assert stored.acknowledged_by == operator
    assert stored.state == AlarmState.NORMAL
    assert stored.closed_at == returned_at
    assert stored.returned_at == returned_at
    assert actions == [TransitionAction.ACKNOWLEDGE, TransitionAction.RETURN]
    assert occurrences == 1
    assert state.condition_active is False
    assert state.last_sample_time == returned_at


def test_concurrent_evaluations_raise_one_alarm(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), schema_context("alpha"):
        sensor = SensorFactory(minimum=0, maximum=200)
        rule = AlarmRule.objects.create(sensor=sensor, condition="hi", limit=100.0)
    # Both evaluators receive the same reading, as after a redelivered message, and start together.
    both_ready = threading.Barrier(2)
    errors = []

    def evaluate():
        try:
            both_ready.wait(timeout=5)
            evaluate_readings("alpha", [Sample(sensor.id, at(0), 105.0)], {sensor.id})
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    try:
        with django_db_blocker.unblock():
            threads = [threading.Thread(target=evaluate) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=20)
            with schema_context("alpha"):
                alarms = list(Alarm.objects.filter(rule=rule))
                transitions = [actions_of(alarm) for alarm in alarms]
                state = AlarmRuleState.objects.get(rule=rule)
    finally:
        with django_db_blocker.unblock(), schema_context("alpha"):
            Alarm.objects.filter(rule=rule).delete()
            rule.delete()
            unit = sensor.unit
            sensor.delete()
            unit.delete()
            unit.site.delete()
        connection.set_schema_to_public()

    assert errors == []
    assert len(alarms) == 1
    assert transitions == [[TransitionAction.ACTIVATE]]
    assert alarms[0].activated_at == at(0)
    assert state.condition_active is True
    assert state.last_sample_time == at(0)
