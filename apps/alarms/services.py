"""Operator actions on alarms: acknowledge, shelve and unshelve, and taking rules out of service.

Each runs in one transaction, logs an ``AlarmTransition`` with the actor and
comment, writes an audit entry in the same transaction, and pushes the new
state to the unit's WebSocket group after commit.
"""

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.audit.choices import AuditAction

from .choices import ANNUNCIATED_STATES, UNACKNOWLEDGED_STATES, AlarmState, TransitionAction
from .models import Alarm, AlarmRule, AlarmRuleState
from .transitions import change_state

logger = logging.getLogger(__name__)

# Shelving has a time limit so that no alarm is forgotten on the shelf. One
# day covers every shift of a plant day.
MAX_SHELVE_DURATION = timedelta(hours=24)
# Task name of the periodic job that ends expired shelving, recorded as the actor.
SHELF_EXPIRY_JOB = "alarms.run_timers"


class AlarmActionError(Exception):
    """An operator action that the alarm's current state does not allow."""


class AlarmConflictError(AlarmActionError):
    """Someone else changed the alarm between reading and updating it."""


def acknowledge_alarm(alarm, *, actor, comment=""):
    """Acknowledge an unacknowledged occurrence; one that has returned to normal closes.

    Of two operators acknowledging at once, one succeeds and the other gets
    ``AlarmConflictError`` naming who acknowledged first.
    """
    with transaction.atomic():
        current = Alarm.objects.select_related("rule", "acknowledged_by").get(pk=alarm.pk)
        if current.state not in UNACKNOWLEDGED_STATES:
            raise AlarmActionError(_not_unacknowledged_message(current))

        from_state = current.state
        now = timezone.now()
        fields = {"acknowledged_at": now, "acknowledged_by": actor}
        if current.state == AlarmState.ACTIVE_UNACKNOWLEDGED:
            to_state = AlarmState.ACTIVE_ACKNOWLEDGED
        else:
            to_state = AlarmState.NORMAL
            fields["closed_at"] = now
        if not change_state(
            current,
            to_state=to_state,
            action=TransitionAction.ACKNOWLEDGE,
            time=now,
            actor=actor,
            comment=comment,
            **fields,
        ):
            raise AlarmConflictError(_not_unacknowledged_message(_reload(current)))
        _audit(AuditAction.ALARM_ACKNOWLEDGED, actor=actor, alarm=current, from_state=from_state, comment=comment)
    logger.info("Alarm %s acknowledged by user %s", current.pk, actor.pk)
    return current


def shelve_alarm(alarm, *, actor, until, comment):
    """Shelve an annunciated occurrence until ``until``, with ``comment`` as the reason.

    The occurrence keeps tracking its condition while shelved, but is neither
    shown nor pushed until it is unshelved or the shelving expires.
    """
    comment = (comment or "").strip()
    if not comment:
        raise AlarmActionError("A reason is required to shelve an alarm; say why in the comment.")
    now = timezone.now()
    if until <= now:
        raise AlarmActionError(f"Shelve expiry {until.isoformat()} is not in the future; choose a later time.")
    if until - now > MAX_SHELVE_DURATION:
        raise AlarmActionError(
            f"Shelve expiry {until.isoformat()} is more than {MAX_SHELVE_DURATION} ahead; "
            "shelve for a shorter time or take the rule out of service."
        )

    with transaction.atomic():
        current = Alarm.objects.select_related("rule").get(pk=alarm.pk)
        if current.state not in ANNUNCIATED_STATES:
            raise AlarmActionError(
                f"Alarm {current.pk} is {current.get_state_display().lower()}; "
                "only an alarm in the alarm list can be shelved."
            )
        from_state = current.state
        if not change_state(
            current,
            to_state=AlarmState.SHELVED,
            action=TransitionAction.SHELVE,
            time=now,
            actor=actor,
            comment=comment,
            shelved_until=until,
            shelve_reason=comment,
            shelved_by=actor,
        ):
            raise AlarmConflictError(_changed_message(_reload(current)))
        _audit(
            AuditAction.ALARM_SHELVED, actor=actor, alarm=current, from_state=from_state, comment=comment, until=until
        )
    logger.info("Alarm %s shelved by user %s until %s", current.pk, actor.pk, until.isoformat())
    return current


def unshelve_alarm(alarm, *, actor, comment=""):
    """Return a shelved occurrence to the alarm list, or close it when its condition has cleared."""
    with transaction.atomic():
        current = Alarm.objects.select_related("rule").get(pk=alarm.pk)
        if current.state != AlarmState.SHELVED:
            raise AlarmActionError(f"Alarm {current.pk} is {current.get_state_display().lower()}, not shelved.")
        if not _unshelve(current, action=TransitionAction.UNSHELVE, actor=actor, comment=comment):
            raise AlarmConflictError(_changed_message(_reload(current)))
        _audit(AuditAction.ALARM_UNSHELVED, actor=actor, alarm=current, from_state=AlarmState.SHELVED, comment=comment)
    logger.info("Alarm %s unshelved by user %s", current.pk, actor.pk)
    return current


def expire_shelved_alarms(now=None):
    """Unshelve every occurrence whose shelving has expired; return how many were unshelved."""
    now = now or timezone.now()
    expired = 0
    for alarm_id in Alarm.objects.filter(state=AlarmState.SHELVED, shelved_until__lte=now).values_list("pk", flat=True):
        with transaction.atomic():
            current = Alarm.objects.select_related("rule").get(pk=alarm_id)
            if current.state == AlarmState.SHELVED and _unshelve(
                current, action=TransitionAction.SHELF_EXPIRED, actor=None, comment="", now=now
            ):
                _audit(
                    AuditAction.ALARM_UNSHELVED,
                    actor=audit.Actor.system_job(SHELF_EXPIRY_JOB),
                    alarm=current,
                    from_state=AlarmState.SHELVED,
                    comment="Shelving expired.",
                )
                expired += 1
    if expired:
        logger.info("Unshelved %d alarms whose shelving expired", expired)
    return expired


def remove_rule_from_service(rule, *, actor, comment):
    """Take a rule out of service, e.g. for a broken instrument; its open occurrence goes out of service too."""
    comment = (comment or "").strip()
    if not comment:
        raise AlarmActionError("A reason is required to take an alarm rule out of service; say why in the comment.")
    with transaction.atomic():
        updated = AlarmRule.objects.filter(pk=rule.pk, in_service=True).update(in_service=False)
        if not updated:
            raise AlarmActionError(f"Alarm rule {rule.pk} is already out of service.")
        current = Alarm.objects.open().select_related("rule").filter(rule_id=rule.pk).first()
        if current is not None and not change_state(
            current,
            to_state=AlarmState.OUT_OF_SERVICE,
            action=TransitionAction.REMOVE_FROM_SERVICE,
            time=timezone.now(),
            actor=actor,
            comment=comment,
        ):
            raise AlarmConflictError(_changed_message(_reload(current)))
        _audit_rule_service(rule, actor=actor, in_service=False, comment=comment)
    rule.in_service = False
    logger.info("Alarm rule %s taken out of service by user %s", rule.pk, actor.pk)
    return rule


def return_rule_to_service(rule, *, actor, comment=""):
    """Put a rule back in service; its out-of-service occurrence closes and the next reading is evaluated afresh."""
    with transaction.atomic():
        updated = AlarmRule.objects.filter(pk=rule.pk, in_service=False).update(in_service=True)
        if not updated:
            raise AlarmActionError(f"Alarm rule {rule.pk} is already in service.")
        # The evaluator skipped the rule while out of service, so its memory is outdated.
        AlarmRuleState.objects.filter(rule_id=rule.pk).update(
            condition_active=False, pending_since=None, clear_pending_since=None
        )
        current = Alarm.objects.select_related("rule").filter(rule_id=rule.pk, state=AlarmState.OUT_OF_SERVICE).first()
        if current is not None:
            now = timezone.now()
            if not change_state(
                current,
                to_state=AlarmState.NORMAL,
                action=TransitionAction.RETURN_TO_SERVICE,
                time=now,
                actor=actor,
                comment=comment,
                closed_at=now,
            ):
                raise AlarmConflictError(_changed_message(_reload(current)))
        _audit_rule_service(rule, actor=actor, in_service=True, comment=comment)
    rule.in_service = True
    logger.info("Alarm rule %s returned to service by user %s", rule.pk, actor.pk)
    return rule


def _unshelve(alarm, *, action, actor, comment, now=None):
    now = now or timezone.now()
    if alarm.condition_active:
        # Back on the list it needs a fresh acknowledgement, as for a new activation.
        return change_state(
            alarm,
            to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
            action=action,
            time=now,
            actor=actor,
            comment=comment,
            shelved_until=None,
            acknowledged_at=None,
            acknowledged_by=None,
        )
    return change_state(
        alarm,
        to_state=AlarmState.NORMAL,
        action=action,
        time=now,
        actor=actor,
        comment=comment,
        shelved_until=None,
        closed_at=now,
    )


def _audit(action, *, actor, alarm, from_state, comment, **detail):
    audit.record(
        action,
        actor=actor,
        obj=alarm,
        changes={"state": [from_state, alarm.state]},
        detail={"comment": comment, **detail},
    )


def _audit_rule_service(rule, *, actor, in_service, comment):
    audit.record(
        AuditAction.OBJECT_UPDATED,
        actor=actor,
        obj=rule,
        changes={"in_service": [not in_service, in_service]},
        detail={"comment": comment},
    )


def _reload(alarm):
    return Alarm.objects.select_related("rule", "acknowledged_by").get(pk=alarm.pk)


def _not_unacknowledged_message(alarm):
    if alarm.acknowledged_by is not None and alarm.acknowledged_at is not None:
        return (
            f"Alarm {alarm.pk} was already acknowledged by {alarm.acknowledged_by.get_username()} "
            f"at {alarm.acknowledged_at.isoformat()}."
        )
    return f"Alarm {alarm.pk} is {alarm.get_state_display().lower()}; only an unacknowledged alarm can be acknowledged."


def _changed_message(alarm):
    return (
        f"Alarm {alarm.pk} was changed by someone else and is now {alarm.get_state_display().lower()}; "
        "reload the alarm list and try again."
    )
