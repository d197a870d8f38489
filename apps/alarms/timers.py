"""Alarm changes driven by the clock rather than by a reading.

Stale data, on-delays that elapse without a new reading, re-alarm,
escalation, suppression, shelving expiry and the return to normal of
security alarms.
"""

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F
from django.utils import timezone

from apps.units.choices import UnitStatus

from .choices import AlarmState, Condition, NotificationEvent, Priority, TargetPurpose, TransitionAction
from .evaluation import Activation
from .evaluator import activate, lock_rule_states
from .models import Alarm, AlarmRule, AlarmRuleState, AlarmTransition, NotificationDelivery, NotificationTarget
from .notifications import queue_deliveries
from .security import return_security_alarms
from .services import expire_shelved_alarms
from .transitions import change_state

logger = logging.getLogger(__name__)


def raise_stale_alarms(now=None):
    """Activate each stale-data rule whose sensor has sent no reading for ``stale_after`` seconds.

    A rule that never saw a reading counts from its creation. The next
    reading clears the condition through the normal evaluation.
    """
    now = now or timezone.now()
    rules = list(
        AlarmRule.objects.evaluated().filter(condition=Condition.STALE).select_related("sensor__unit").order_by("pk")
    )
    if not rules:
        return 0
    raised = 0
    with transaction.atomic():
        states = lock_rule_states(rules)
        for rule in rules:
            state = states[rule.pk]
            if state.condition_active:
                continue
            last_seen = state.last_sample_time or rule.created_at
            stale_since = last_seen + timedelta(seconds=rule.stale_after)
            if stale_since > now:
                continue
            activate(rule, Activation(time=now, condition_started_at=stale_since, value=None))
            state.condition_active = True
            state.pending_since = None
            state.clear_pending_since = None
            state.save(update_fields=["condition_active", "pending_since", "clear_pending_since"])
            raised += 1
    if raised:
        logger.info("Raised %d stale-data alarms", raised)
    return raised


def activate_elapsed_on_delays(now=None):
    """Activate each rule whose condition has held for its on-delay although no reading arrived since.

    A device that reports by exception sends no reading while the value
    stays in alarm, so without this the alarm would wait for the next
    change. The activation time is when the on-delay elapsed.
    """
    now = now or timezone.now()
    due_rule_ids = list(
        AlarmRuleState.objects.filter(
            condition_active=False,
            pending_since__isnull=False,
            rule__enabled=True,
            rule__in_service=True,
            pending_since__lte=now
            - ExpressionWrapper(F("rule__on_delay") * timedelta(seconds=1), output_field=DurationField()),
        )
        .exclude(rule__condition=Condition.STALE)
        .values_list("rule_id", flat=True)
    )
    if not due_rule_ids:
        return 0
    rules = list(AlarmRule.objects.filter(pk__in=due_rule_ids).select_related("sensor__unit").order_by("pk"))
    activated = 0
    with transaction.atomic():
        states = lock_rule_states(rules)
        for rule in rules:
            state = states[rule.pk]
            # The locked row is the truth: a reading may have cleared or activated it meanwhile.
            if state.condition_active or state.pending_since is None:
                continue
            elapsed_at = state.pending_since + timedelta(seconds=rule.on_delay)
            if elapsed_at > now:
                continue
            activate(rule, Activation(time=elapsed_at, condition_started_at=state.pending_since, value=state.last_value))
            state.condition_active = True
            state.pending_since = None
            state.clear_pending_since = None
            state.save(update_fields=["condition_active", "pending_since", "clear_pending_since"])
            activated += 1
    if activated:
        logger.info("Activated %d alarms whose on-delay elapsed without a new reading", activated)
    return activated


def realarm_acknowledged_alarms(now=None):
    """Annunciate again each acknowledged alarm that stayed active longer than its rule's ``realarm_after``."""
    now = now or timezone.now()
    due = (
        Alarm.objects.filter(state=AlarmState.ACTIVE_ACKNOWLEDGED, rule__realarm_after__isnull=False)
        .annotate(
            realarm_at=F("acknowledged_at")
            + ExpressionWrapper(F("rule__realarm_after") * timedelta(seconds=1), output_field=DurationField())
        )
        .filter(realarm_at__lte=now)
        .select_related("rule")
    )
    realarmed = 0
    for alarm in due:
        with transaction.atomic():
            if change_state(
                alarm,
                to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
                action=TransitionAction.REALARM,
                time=now,
                comment=f"Still active {alarm.rule.realarm_after} s after acknowledgement.",
                acknowledged_at=None,
                acknowledged_by=None,
            ):
                realarmed += 1
    if realarmed:
        logger.info("Re-alarmed %d acknowledged alarms that are still active", realarmed)
    return realarmed


def escalate_unacknowledged_alarms(now=None):
    """Notify each escalation target of the critical alarms unacknowledged longer than its ``escalate_after``.

    An alarm escalates at most once per target; the escalation is logged as
    a transition of the alarm that leaves its state unchanged.
    """
    now = now or timezone.now()
    escalated = 0
    for target in NotificationTarget.objects.filter(enabled=True, purpose=TargetPurpose.ESCALATION).order_by("pk"):
        due = (
            Alarm.objects.filter(
                state=AlarmState.ACTIVE_UNACKNOWLEDGED,
                priority=Priority.CRITICAL,
                activated_at__lte=now - timedelta(minutes=target.escalate_after),
            )
            .exclude(
                pk__in=NotificationDelivery.objects.filter(target=target, event=NotificationEvent.ESCALATED).values(
                    "alarm_id"
                )
            )
            .select_related("rule")
            .order_by("pk")
        )
        for alarm in due:
            with transaction.atomic():
                # Lock the alarm so a concurrent acknowledgement is seen before escalating.
                current = (
                    Alarm.objects.select_for_update(of=("self",))
                    .filter(pk=alarm.pk, state=AlarmState.ACTIVE_UNACKNOWLEDGED)
                    .first()
                )
                if current is None:
                    continue
                transition = AlarmTransition.objects.create(
                    alarm=current,
                    time=now,
                    action=TransitionAction.ESCALATE,
                    from_state=current.state,
                    to_state=current.state,
                    comment=f"Unacknowledged for {target.escalate_after} min; escalated to {target.name}.",
                )
                Alarm.objects.filter(pk=current.pk, escalated_at__isnull=True).update(escalated_at=now)
                queue_deliveries(current, transition, NotificationEvent.ESCALATED, [target])
                escalated += 1
    if escalated:
        logger.info("Escalated %d unacknowledged critical alarms", escalated)
    return escalated


def end_suppression(now=None):
    """Annunciate or close the alarms suppressed by a unit state once their unit is back in service."""
    now = now or timezone.now()
    released = 0
    for alarm in Alarm.objects.filter(state=AlarmState.SUPPRESSED, unit__status=UnitStatus.IN_SERVICE).select_related(
        "rule"
    ):
        with transaction.atomic():
            if alarm.condition_active:
                changed = change_state(
                    alarm,
                    to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
                    action=TransitionAction.UNSUPPRESS,
                    time=now,
                    comment="Unit is back in service.",
                )
            else:
                changed = change_state(
                    alarm,
                    to_state=AlarmState.NORMAL,
                    action=TransitionAction.UNSUPPRESS,
                    time=now,
                    comment="Unit is back in service.",
                    closed_at=now,
                )
            released += int(changed)
    if released:
        logger.info("Ended suppression of %d alarms whose unit is back in service", released)
    return released


def run_alarm_timers(now=None):
    """Apply every clock-driven change due at ``now``; return the counts by kind."""
    now = now or timezone.now()
    return {
        "stale": raise_stale_alarms(now),
        "on_delay": activate_elapsed_on_delays(now),
        "realarmed": realarm_acknowledged_alarms(now),
        "escalated": escalate_unacknowledged_alarms(now),
        "unsuppressed": end_suppression(now),
        "unshelved": expire_shelved_alarms(now),
        "security_returned": return_security_alarms(now),
    }
