"""State changes of alarm occurrences, shared by the operator services and the evaluator.

Every change is a conditional UPDATE on the state the caller read. Of two
concurrent changes from the same state exactly one takes effect, and the
other updates zero rows, so it can report the conflict.
"""

import logging

from .choices import ANNUNCIATED_STATES, AlarmState
from .models import Alarm, AlarmTransition
from .notifications import notify_annunciation
from .push import push_alarm_after_commit

logger = logging.getLogger(__name__)


def change_state(alarm, *, to_state, action, time, actor=None, comment="", value=None, **fields):
    """Move ``alarm`` from the state it was read in to ``to_state`` and log the transition.

    Return False, changing nothing, when the stored state is no longer
    ``alarm.state`` because someone changed it in the meantime. On success
    ``alarm`` carries the new values and a push is queued for after commit.
    """
    from_state = alarm.state
    updated = Alarm.objects.filter(pk=alarm.pk, state=from_state).update(state=to_state, **fields)
    if not updated:
        logger.info(
            "Alarm %s was no longer %s when %s tried to %s it", alarm.pk, from_state, actor or "the evaluator", action
        )
        return False

    alarm.state = to_state
    for name, field_value in fields.items():
        setattr(alarm, name, field_value)
    transition = AlarmTransition.objects.create(
        alarm=alarm,
        time=time,
        action=action,
        from_state=from_state,
        to_state=to_state,
        actor=actor,
        comment=comment,
        value=value,
    )
    if from_state in ANNUNCIATED_STATES or to_state in ANNUNCIATED_STATES:
        push_alarm_after_commit(alarm)
    if to_state == AlarmState.ACTIVE_UNACKNOWLEDGED and from_state != to_state:
        notify_annunciation(alarm, transition)
    return True


def open_alarm(*, rule, state, action, time, condition_started_at, value, comment="", **fields):
    """Create a new occurrence of ``rule`` in ``state`` and log how it started."""
    alarm = Alarm.objects.create(
        rule=rule,
        unit_id=rule.sensor.unit_id,
        priority=rule.priority,
        message=rule.text,
        state=state,
        condition_started_at=condition_started_at,
        activated_at=time,
        activation_value=value,
        **fields,
    )
    transition = AlarmTransition.objects.create(
        alarm=alarm, time=time, action=action, from_state="", to_state=state, comment=comment, value=value
    )
    if state in ANNUNCIATED_STATES:
        push_alarm_after_commit(alarm)
    if state == AlarmState.ACTIVE_UNACKNOWLEDGED:
        notify_annunciation(alarm, transition)
    return alarm
