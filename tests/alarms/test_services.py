import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.alarms import services
from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, AlarmRule, AlarmTransition
from apps.alarms.services import (
    AlarmActionError,
    AlarmConflictError,
    acknowledge_alarm,
    remove_rule_from_service,
    return_rule_to_service,
    shelve_alarm,
    unshelve_alarm,
)
from apps.alarms.transitions import change_state
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry

from .conftest import at


@pytest.fixture
def active_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0)
    feed(sensor, (at(0), 105.0))
    return Alarm.objects.get()


def test_acknowledge_twice_names_first_operator(active_alarm, admin):
    acknowledge_alarm(active_alarm, actor=admin)

    with pytest.raises(AlarmActionError) as raised:
        acknowledge_alarm(active_alarm, actor=admin)

    assert "already acknowledged by admin" in str(raised.value)
    assert AlarmTransition.objects.filter(action=TransitionAction.ACKNOWLEDGE).count() == 1


def test_acknowledge_returned_alarm_closes_it(active_alarm, sensor, feed, admin):
    feed(sensor, (at(10), 90.0))

    alarm = acknowledge_alarm(active_alarm, actor=admin, comment="Seen")

    alarm.refresh_from_db()
    assert alarm.state == AlarmState.NORMAL
    assert alarm.closed_at is not None
    assert alarm.transitions.last().from_state == AlarmState.RETURNED_UNACKNOWLEDGED


def test_acknowledge_transition_records_actor_and_comment(active_alarm, admin):
    acknowledge_alarm(active_alarm, actor=admin, comment="Burner checked")

    transition = active_alarm.transitions.get(action=TransitionAction.ACKNOWLEDGE)
    assert transition.actor == admin
    assert transition.comment == "Burner checked"
    assert transition.from_state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert transition.to_state == AlarmState.ACTIVE_ACKNOWLEDGED


def test_shelved_alarm_tracks_condition_and_returns_unacknowledged(active_alarm, sensor, feed, admin):
    acknowledge_alarm(active_alarm, actor=admin)
    until = timezone.now() + timedelta(hours=1)

    shelve_alarm(active_alarm, actor=admin, until=until, comment="Sensor being recalibrated")
    feed(sensor, (at(10), 90.0))
    feed(sensor, (at(20), 108.0))
    shelved = Alarm.objects.get(pk=active_alarm.pk)
    assert shelved.state == AlarmState.SHELVED
    assert shelved.shelve_reason == "Sensor being recalibrated"
    assert shelved.shelved_until == until
    assert Alarm.objects.annunciated().count() == 0
    unshelve_alarm(active_alarm, actor=admin, comment="Calibration done")

    alarm = Alarm.objects.get()
    assert alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert alarm.acknowledged_at is None
    assert alarm.shelved_until is None
    assert list(alarm.transitions.values_list("action", "to_state")) == [
        (TransitionAction.ACTIVATE, AlarmState.ACTIVE_UNACKNOWLEDGED),
        (TransitionAction.ACKNOWLEDGE, AlarmState.ACTIVE_ACKNOWLEDGED),
        (TransitionAction.SHELVE, AlarmState.SHELVED),
        (TransitionAction.RETURN, AlarmState.SHELVED),
        (TransitionAction.ACTIVATE, AlarmState.SHELVED),
        (TransitionAction.UNSHELVE, AlarmState.ACTIVE_UNACKNOWLEDGED),
    ]


def test_unshelve_after_condition_cleared_closes_alarm(active_alarm, sensor, feed, admin):
    shelve_alarm(active_alarm, actor=admin, until=timezone.now() + timedelta(hours=1), comment="Known fault")
    feed(sensor, (at(10), 90.0))

    alarm = unshelve_alarm(active_alarm, actor=admin)

    assert alarm.state == AlarmState.NORMAL
    assert alarm.closed_at is not None


@pytest.mark.parametrize(
    ("until", "comment", "message"),
    [
        (timedelta(hours=1), "  ", "reason is required"),
        (timedelta(minutes=-1), "Known fault", "not in the future"),
        (timedelta(hours=25), "Known fault", "more than 1 day"),
    ],
)
def test_shelve_rejects_invalid_request(active_alarm, admin, until, comment, message):
    with pytest.raises(AlarmActionError) as raised:
        shelve_alarm(active_alarm, actor=admin, until=timezone.now() + until, comment=comment)

    assert message in str(raised.value)
    assert Alarm.objects.get().state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_unshelve_of_unshelved_alarm_is_rejected(active_alarm, admin):
    with pytest.raises(AlarmActionError) as raised:
        unshelve_alarm(active_alarm, actor=admin)

    assert "not shelved" in str(raised.value)


def test_out_of_service_rule_and_return(active_alarm, sensor, feed, admin):
    rule = active_alarm.rule

    remove_rule_from_service(rule, actor=admin, comment="Transmitter replaced")
    feed(sensor, (at(10), 90.0), (at(20), 120.0))
    assert Alarm.objects.get().state == AlarmState.OUT_OF_SERVICE
    assert Alarm.objects.get().condition_active is True
    return_rule_to_service(rule, actor=admin)
    feed(sensor, (at(30), 125.0))

    closed, new = Alarm.objects.order_by("pk")
    assert closed.state == AlarmState.NORMAL
    assert new.state == AlarmState.ACTIVE_UNACKNOWLEDGED
    assert new.activated_at == at(30)
    assert AlarmRule.objects.get().in_service is True


def test_concurrent_acknowledgements_give_one(committed_alarm, django_db_blocker, monkeypatch):
    alarm, users = committed_alarm
    # Both operators have read the unacknowledged alarm before either updates it.
    both_have_read = threading.Barrier(len(users))
    outcomes = {}

    def change_state_after_both_read(*args, **kwargs):
        both_have_read.wait(timeout=5)
        return change_state(*args, **kwargs)

    monkeypatch.setattr(services, "change_state", change_state_after_both_read)

    def acknowledge(user):
        try:
            with schema_context("alpha"):
                acknowledge_alarm(alarm, actor=user, comment=f"by {user.username}")
            outcomes[user.username] = "acknowledged"
        except AlarmActionError as exc:
            outcomes[user.username] = exc
        finally:
            connection.close()

    with django_db_blocker.unblock():
        threads = [threading.Thread(target=acknowledge, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        with schema_context("alpha"):
            transitions = list(AlarmTransition.objects.filter(alarm=alarm, action=TransitionAction.ACKNOWLEDGE))
            stored = Alarm.objects.select_related("acknowledged_by").get(pk=alarm.pk)

    winners = [name for name, outcome in outcomes.items() if outcome == "acknowledged"]
    losers = [outcome for outcome in outcomes.values() if outcome != "acknowledged"]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], AlarmConflictError)
    assert f"already acknowledged by {winners[0]}" in str(losers[0])
    assert len(transitions) == 1
    assert transitions[0].actor.username == winners[0]
    assert stored.state == AlarmState.ACTIVE_ACKNOWLEDGED
    assert stored.acknowledged_by.username == winners[0]


def test_operator_actions_are_audited(active_alarm, admin):
    acknowledge_alarm(active_alarm, actor=admin, comment="Burner checked")
    shelve_alarm(active_alarm, actor=admin, until=timezone.now() + timedelta(hours=1), comment="Known fault")
    unshelve_alarm(active_alarm, actor=admin, comment="Fixed")

    entries = list(
        AuditEntry.objects.filter(object_type="alarms.alarm", object_id=str(active_alarm.pk)).order_by("sequence")
    )
    assert [entry.action for entry in entries] == [
        AuditAction.ALARM_ACKNOWLEDGED,
        AuditAction.ALARM_SHELVED,
        AuditAction.ALARM_UNSHELVED,
    ]
    assert entries[0].actor_name == "admin"
    assert entries[0].changes == {"state": [AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.ACTIVE_ACKNOWLEDGED]}
    assert entries[0].detail == {"comment": "Burner checked"}
    assert entries[1].detail["comment"] == "Known fault"
    assert entries[2].changes == {"state": [AlarmState.SHELVED, AlarmState.ACTIVE_UNACKNOWLEDGED]}


def test_rejected_acknowledgement_writes_no_audit_entry(active_alarm, admin):
    acknowledge_alarm(active_alarm, actor=admin)

    with pytest.raises(AlarmActionError):
        acknowledge_alarm(active_alarm, actor=admin)

    assert AuditEntry.objects.filter(action=AuditAction.ALARM_ACKNOWLEDGED).count() == 1
