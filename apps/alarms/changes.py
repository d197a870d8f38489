"""Alarm changes of one evaluation, worked out in memory and written together.

The evaluator adds each rule's activations and returns in time order.
``AlarmChanges.apply`` reads the open occurrences of those rules in one
query and applies the events to them in memory, with the same rules as
``evaluator.activate`` and ``evaluator.clear``. It then writes the result
with one conditional UPDATE of the open occurrences, one INSERT each for new
occurrences, transitions and notification deliveries, and one push of all
changes after commit.

Every update of an open occurrence is conditional on the state that was read,
as in ``transitions.change_state``. A rule whose occurrence an operator
changed in the meantime keeps none of its planned changes: ``apply`` returns
its events, and the caller applies them one by one with ``activate`` and
``clear``, which read the occurrence again.
"""

import logging
from dataclasses import dataclass, field

from django.db.models import prefetch_related_objects

from apps.units.choices import UnitStatus

from .bulk import update_from_values
from .choices import ANNUNCIATED_STATES, AlarmState, TransitionAction
from .evaluation import Activation
from .models import Alarm, AlarmTransition
from .notifications import notify_annunciations
from .push import alarm_payload, push_payloads_after_commit

logger = logging.getLogger(__name__)

# Columns of an open occurrence that activations and returns change.
ALARM_COLUMNS = [
    ("state", "varchar"),
    ("condition_active", "boolean"),
    ("returned_at", "timestamptz"),
    ("closed_at", "timestamptz"),
]


@dataclass
class RulePlan:
    """The planned changes of one rule's occurrences, applied only if its open occurrence is unchanged."""

    rule: object
    events: list
    existing: Alarm | None = None
    existing_state: str | None = None
    existing_changed: bool = False
    new_alarms: list = field(default_factory=list)
    transitions: list = field(default_factory=list)
    # (alarm, payload) per push, in order; a new occurrence's payload gets its id after the INSERT.
    pushes: list = field(default_factory=list)
    annunciations: list = field(default_factory=list)

    def record(self, alarm, *, from_state, action, time, value, comment=""):
        transition = AlarmTransition(
            alarm=alarm,
            time=time,
            action=action,
            from_state=from_state,
            to_state=alarm.state,
            comment=comment,
            value=value,
        )
        self.transitions.append(transition)
        if alarm is self.existing:
            self.existing_changed = True
        if from_state in ANNUNCIATED_STATES or alarm.state in ANNUNCIATED_STATES:
            self.pushes.append((alarm, alarm_payload(alarm)))
        if alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED and from_state != alarm.state:
            self.annunciations.append((alarm, transition))


class AlarmChanges:
    """Activations and returns of several rules, collected during one evaluation and applied by ``apply``."""

    def __init__(self):
        self._events = {}

    def add(self, rule, event):
        """Queue an ``Activation`` or ``Return`` of ``rule``; events of one rule must be added in time order."""
        self._events.setdefault(rule.pk, (rule, []))[1].append(event)

    def apply(self):
        """Write the queued changes in the current transaction; return ``(rule, events)`` of the rules not applied.

        A rule is not applied when its open occurrence changed state after it
        was read, so the caller must apply those events again with a fresh read.
        """
        if not self._events:
            return []
        rules = {rule_id: rule for rule_id, (rule, _events) in self._events.items()}
        # New occurrences need the sensor's name and the unit's status; the evaluator loads rules without them.
        prefetch_related_objects(list(rules.values()), "sensor__unit")
        open_alarms = {}
        for alarm in Alarm.objects.open().filter(rule_id__in=rules):
            alarm.rule = rules[alarm.rule_id]
            open_alarms[alarm.rule_id] = alarm

        plans = [plan_rule(rule, events, open_alarms.get(rule.pk)) for rule, events in self._events.values()]
        self._events = {}

        changed_existing = [plan for plan in plans if plan.existing_changed]
        updated_ids = update_from_values(
            Alarm._meta.db_table,
            ("id", "bigint"),
            ALARM_COLUMNS,
            [
                (
                    plan.existing.pk,
                    plan.existing.state,
                    plan.existing.condition_active,
                    plan.existing.returned_at,
                    plan.existing.closed_at,
                    plan.existing_state,
                )
                for plan in changed_existing
            ],
            match=[("state", "varchar")],
            returning=True,
        )
        conflicts = [plan for plan in changed_existing if plan.existing.pk not in updated_ids]
        for plan in conflicts:
            logger.info(
                "Alarm %s of rule %s was no longer %s when the evaluator changed it; applying its %d events again",
                plan.existing.pk, plan.rule.pk, plan.existing_state, len(plan.events),
            )
        conflicting_rules = {plan.rule.pk for plan in conflicts}
        applied = [plan for plan in plans if plan.rule.pk not in conflicting_rules]

        new_alarms = [alarm for plan in applied for alarm in plan.new_alarms]
        if new_alarms:
            Alarm.objects.bulk_create(new_alarms)
            for alarm in new_alarms:
                logger.info("Alarm %s of rule %s activated at %s", alarm.pk, alarm.rule_id, alarm.activated_at.isoformat())
        AlarmTransition.objects.bulk_create([transition for plan in applied for transition in plan.transitions])

        notify_annunciations([pair for plan in applied for pair in plan.annunciations])
        messages = []
        for plan in applied:
            for alarm, payload in plan.pushes:
                payload["id"] = alarm.pk
                messages.append((alarm.unit_id, payload))
        push_payloads_after_commit(messages)
        return [(plan.rule, plan.events) for plan in conflicts]


def plan_rule(rule, events, current):
    """Apply ``events`` to ``current``, the open occurrence of ``rule`` (or None), in memory; return the plan."""
    plan = RulePlan(rule=rule, events=events, existing=current, existing_state=current.state if current else None)
    for event in events:
        if isinstance(event, Activation):
            current = _plan_activation(plan, current, event)
        else:
            current = _plan_return(plan, current, event)
    return plan


def _plan_activation(plan, current, activation):
    """Plan what ``evaluator.activate`` does; return the open occurrence afterwards."""
    rule = plan.rule
    if current is None:
        unit = rule.sensor.unit
        suppressed = unit.status != UnitStatus.IN_SERVICE
        alarm = Alarm(
            rule=rule,
            unit_id=unit.pk,
            priority=rule.priority,
            message=rule.text,
            state=AlarmState.SUPPRESSED if suppressed else AlarmState.ACTIVE_UNACKNOWLEDGED,
            condition_started_at=activation.condition_started_at,
            activated_at=activation.time,
            activation_value=activation.value,
        )
        plan.new_alarms.append(alarm)
        plan.record(
            alarm,
            from_state="",
            action=TransitionAction.SUPPRESS if suppressed else TransitionAction.ACTIVATE,
            time=activation.time,
            value=activation.value,
            comment=f"Unit is {unit.get_status_display().lower()}." if suppressed else "",
        )
        return alarm

    if current.state in (AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.ACTIVE_ACKNOWLEDGED):
        logger.warning("Alarm %s of rule %s is already active; activation ignored", current.pk, rule.pk)
        return current
    from_state = current.state
    if from_state == AlarmState.RETURNED_UNACKNOWLEDGED:
        current.state = AlarmState.ACTIVE_UNACKNOWLEDGED
    # Shelved, suppressed or out of service: track the condition without annunciating it.
    current.condition_active = True
    current.returned_at = None
    plan.record(current, from_state=from_state, action=TransitionAction.ACTIVATE, time=activation.time, value=activation.value)
    return current


def _plan_return(plan, current, event):
    """Plan what ``evaluator.clear`` does; return the open occurrence afterwards, None once it closed."""
    if current is None or not current.condition_active:
        return current
    from_state = current.state
    current.condition_active = False
    current.returned_at = event.time
    if from_state == AlarmState.ACTIVE_UNACKNOWLEDGED:
        current.state = AlarmState.RETURNED_UNACKNOWLEDGED
    elif from_state in (AlarmState.ACTIVE_ACKNOWLEDGED, AlarmState.SUPPRESSED):
        current.state = AlarmState.NORMAL
        current.closed_at = event.time
    plan.record(current, from_state=from_state, action=TransitionAction.RETURN, time=event.time, value=event.value)
    return None if current.state == AlarmState.NORMAL else current
