"""Alarm changes driven by the clock rather than by a reading: stale data, re-alarm, suppression and shelving expiry."""

import logging
from datetime import timedelta

from django.db import transaction
from django.db.models import DurationField, ExpressionWrapper, F
from django.utils import timezone

from apps.units.choices import UnitStatus

from .choices import AlarmState, Condition, TransitionAction
from .evaluation import Activation
from .evaluator import activate, lock_rule_states
from .models import Alarm, AlarmRule
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
        "realarmed": realarm_acknowledged_alarms(now),
        "unsuppressed": end_suppression(now),
        "unshelved": expire_shelved_alarms(now),
    }
