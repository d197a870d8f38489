"""Security alarms: the alarm system's side of the audit trail's security monitoring.

``apps.audit.monitoring`` sends ``security_alarm_raised``, and
``on_security_alarm`` (connected in ``AlarmsConfig.ready``) receives it. It
opens an alarm of source "security" without rule or unit, or updates the
open one with the same key. From then on the alarm follows the ISA-18.2 life cycle of every alarm: acknowledge, shelve,
and return to normal at ``clears_at`` through ``return_security_alarms``,
which the alarm timers run.
"""

import logging

from django.db import transaction
from django.utils import timezone

from apps.audit.choices import SecurityTrigger

from .choices import AlarmSource, AlarmState, Priority, TargetPurpose, TransitionAction
from .models import Alarm, AlarmTransition, NotificationTarget
from .notifications import notify_annunciation
from .push import push_alarm_after_commit
from .transitions import change_state

logger = logging.getLogger(__name__)

# Bursts hint at an attack in progress; a new network or a night-time setpoint may well be legitimate.
TRIGGER_PRIORITIES = {
    SecurityTrigger.FAILED_LOGIN_BURST: Priority.HIGH,
    SecurityTrigger.DENIAL_BURST: Priority.HIGH,
    SecurityTrigger.NEW_NETWORK: Priority.MEDIUM,
    SecurityTrigger.OFF_HOURS_SETPOINT: Priority.MEDIUM,
    SecurityTrigger.CERTIFICATE_EXPIRING: Priority.MEDIUM,
    # Devices that use an expired certificate can no longer connect securely.
    SecurityTrigger.CERTIFICATE_EXPIRED: Priority.HIGH,
}
MESSAGE_LENGTH = Alarm._meta.get_field("message").max_length
KEY_LENGTH = Alarm._meta.get_field("key").max_length


def on_security_alarm(sender, *, trigger, key, message, time, window, audit_entry=None, **kwargs):
    """Receive ``security_alarm_raised``; return whether a notification target was notified."""
    # A savepoint of its own, so a database error here leaves the caller's transaction usable.
    with transaction.atomic():
        alarm, annunciated = open_or_update_security_alarm(
            trigger=SecurityTrigger(trigger), key=key, message=message, time=time, window=window,
            audit_entry=audit_entry,
        )
    if not annunciated:
        return False
    return NotificationTarget.objects.receiving(TargetPurpose.ANNUNCIATION, alarm.priority).exists()


def open_or_update_security_alarm(*, trigger, key, message, time, window, audit_entry=None):
    """Open a security alarm for ``key`` or update its open occurrence; return ``(alarm, annunciated)``.

    ``annunciated`` is True when the alarm has just become active and
    unacknowledged, which is when notification targets receive it. An open
    occurrence is locked, so two requests of one burst update it one after
    the other.
    """
    key = key[:KEY_LENGTH]
    message = message[:MESSAGE_LENGTH]
    clears_at = time + window
    comment = f"Audit entry {audit_entry.sequence}: {message}" if audit_entry is not None else ""
    current = Alarm.objects.select_for_update(of=("self",)).open().filter(source=AlarmSource.SECURITY, key=key).first()
    if current is None:
        return _open(trigger, key=key, message=message, time=time, clears_at=clears_at, comment=comment), True

    clears_at = max(clears_at, current.clears_at or clears_at)
    if current.state == AlarmState.RETURNED_UNACKNOWLEDGED:
        change_state(
            current, to_state=AlarmState.ACTIVE_UNACKNOWLEDGED, action=TransitionAction.ACTIVATE, time=time,
            comment=comment, condition_active=True, returned_at=None, clears_at=clears_at, message=message,
        )
        logger.info("Security alarm %s (%s) active again", current.pk, key)
        return current, True
    if audit_entry is None and current.condition_active:
        # A burst going on past its limit only moves the end of the alarm; logging each event would flood the log.
        Alarm.objects.filter(pk=current.pk).update(clears_at=clears_at)
        current.clears_at = clears_at
        return current, False
    # Active (acknowledged or not) or shelved: the same occurrence goes on, with the repeat in its log.
    change_state(
        current, to_state=current.state, action=TransitionAction.RETRIGGER, time=time, comment=comment,
        condition_active=True, returned_at=None, clears_at=clears_at, message=message,
    )
    logger.info("Security alarm %s (%s) triggered again while %s", current.pk, key, current.state)
    return current, False


def _open(trigger, *, key, message, time, clears_at, comment):
    alarm = Alarm.objects.create(
        source=AlarmSource.SECURITY,
        key=key,
        priority=TRIGGER_PRIORITIES.get(trigger, Priority.HIGH),
        message=message,
        state=AlarmState.ACTIVE_UNACKNOWLEDGED,
        condition_started_at=time,
        activated_at=time,
        clears_at=clears_at,
    )
    transition = AlarmTransition.objects.create(
        alarm=alarm, time=time, action=TransitionAction.ACTIVATE, from_state="",
        to_state=AlarmState.ACTIVE_UNACKNOWLEDGED, comment=comment,
    )
    push_alarm_after_commit(alarm)
    notify_annunciation(alarm, transition)
    logger.warning("Security alarm %s (%s) raised: %s", alarm.pk, key, message)
    return alarm


def return_security_alarms(now=None):
    """Return to normal each security alarm whose ``clears_at`` has passed; return how many returned.

    As for process alarms, an unacknowledged one waits for its
    acknowledgement, an acknowledged one closes, and a shelved one stays on
    the shelf with its condition cleared.
    """
    now = now or timezone.now()
    due = Alarm.objects.security().active().filter(clears_at__lte=now).values_list("pk", flat=True)
    returned = 0
    for alarm_id in list(due):
        with transaction.atomic():
            current = Alarm.objects.select_for_update(of=("self",)).filter(pk=alarm_id).first()
            if current is None or not current.condition_active or current.clears_at > now:
                continue
            fields = {"condition_active": False, "returned_at": current.clears_at}
            if current.state == AlarmState.ACTIVE_UNACKNOWLEDGED:
                to_state = AlarmState.RETURNED_UNACKNOWLEDGED
            elif current.state == AlarmState.ACTIVE_ACKNOWLEDGED:
                to_state = AlarmState.NORMAL
                fields["closed_at"] = now
            else:
                to_state = current.state
            if change_state(
                current, to_state=to_state, action=TransitionAction.RETURN, time=current.clears_at, **fields
            ):
                returned += 1
    if returned:
        logger.info("Returned %d security alarms to normal", returned)
    return returned
