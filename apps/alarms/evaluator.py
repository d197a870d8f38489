"""Alarm evaluation of stored readings, registered as a telemetry subscriber.

Readings arrive after their ingest has committed and only when they were new
to history, so a repeated reading never reaches this code. Per rule, the
readings newer than the live value are evaluated live in time order. Older
ones, such as a backlog uploaded after an outage, are replayed on their own
and recorded as backfilled history, so they are never annunciated.
"""

import logging
from collections import defaultdict, deque
from datetime import timedelta

import redis
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django_tenants.utils import schema_context

from apps.sensors.quality import Quality, is_bad
from apps.telemetry import latest
from apps.telemetry.models import Reading
from apps.units.choices import UnitStatus

from .bulk import update_from_values
from .changes import AlarmChanges
from .choices import AlarmState, Condition, TransitionAction
from .evaluation import Activation, ConditionTracker, raw_condition
from .models import Alarm, AlarmRule, AlarmRuleState
from .transitions import change_state, open_alarm

logger = logging.getLogger(__name__)

STATE_COLUMNS = [
    ("condition_active", "boolean"),
    ("pending_since", "timestamptz"),
    ("clear_pending_since", "timestamptz"),
    ("last_sample_time", "timestamptz"),
    ("last_value", "double precision"),
    ("last_quality", "smallint"),
]
STATE_FIELDS = [name for name, _sql_type in STATE_COLUMNS]

# A conditional update loses only to an operator action on the same alarm, so
# a retry is rare. After this many attempts the evaluation fails with an error.
MAX_ATTEMPTS = 3


def evaluate_readings(schema, samples, live_sensor_ids):
    """Evaluate newly stored ``samples`` against the rules of their sensors (telemetry subscriber).

    A deviation rule is evaluated again when only its setpoint sensor has a
    new live value, with the rule's last process value.
    """
    sensor_ids = {sample.sensor_id for sample in samples}
    live_sensor_ids = set(live_sensor_ids)
    live_setpoint_sensors = sensor_ids & live_sensor_ids

    with schema_context(schema):
        rules = list(
            AlarmRule.objects.evaluated()
            .filter(
                Q(sensor_id__in=_id_array(sensor_ids))
                | Q(condition=Condition.DEVIATION, setpoint_sensor_id__in=_id_array(live_setpoint_sensors))
            )
            .order_by("pk")
        )
        if not rules:
            return
        # Grouped only now, because most samples of a poll batch have no rule.
        by_sensor = defaultdict(list)
        for sample in samples:
            by_sensor[sample.sensor_id].append(sample)
        live_times = _cached_live_times(schema, {rule.sensor_id for rule in rules} - live_sensor_ids)
        setpoints = live_setpoints(schema, rules)

        with transaction.atomic():
            states = lock_rule_states(rules)
            originals = {rule_id: _state_values(state) for rule_id, state in states.items()}
            splits = _split_readings(rules, states, by_sensor, live_sensor_ids, live_times)

            changes = AlarmChanges()
            for rule in rules:
                state = states[rule.pk]
                live, backfill = splits[rule.pk]
                if live:
                    _evaluate_live(rule, state, live, changes, setpoints.get(rule.pk))
                elif rule.setpoint_sensor_id in live_setpoint_sensors:
                    setpoint_readings = by_sensor[rule.setpoint_sensor_id]
                    _evaluate_setpoint_change(rule, state, setpoint_readings, changes, setpoints.get(rule.pk))
                if backfill:
                    _record_backfill(rule, backfill, setpoints.get(rule.pk))

            for rule, events in changes.apply():
                for event in events:
                    if isinstance(event, Activation):
                        activate(rule, event)
                    else:
                        clear(rule, time=event.time, value=event.value)
            write_rule_states([state for rule_id, state in states.items() if _state_values(state) != originals[rule_id]])


def _id_array(ids):
    """Return ``ids`` as one array literal for ``__in``, because a poll batch contains thousands of sensors.

    Django's ``__in`` with a list sends one placeholder per id, which cost more than the evaluation itself.
    """
    return RawSQL("SELECT unnest(%s::bigint[])", ["{" + ",".join(str(int(value)) for value in ids) + "}"])


def _split_readings(rules, states, by_sensor, live_sensor_ids, live_times):
    """Return {rule id: (live readings, backfill readings)}, each in time order."""
    splits = {}
    for rule in rules:
        readings = sorted(by_sensor.get(rule.sensor_id, ()), key=lambda sample: sample.time)
        splits[rule.pk] = _split_live(
            readings, states[rule.pk], rule.sensor_id in live_sensor_ids, live_times.get(rule.sensor_id)
        )

    # A new rule must not annunciate excursions from before its first batch.
    first_batches = {
        rule.sensor_id: splits[rule.pk][0]
        for rule in rules
        if states[rule.pk].last_sample_time is None and splits[rule.pk][0]
    }
    history_ends = newest_stored_before(first_batches)
    for rule in rules:
        history_end = history_ends.get(rule.sensor_id)
        if states[rule.pk].last_sample_time is not None or history_end is None:
            continue
        live, backfill = splits[rule.pk]
        older = [sample for sample in live if sample.time <= history_end]
        live = [sample for sample in live if sample.time > history_end]
        splits[rule.pk] = (live, sorted([*backfill, *older], key=lambda sample: sample.time))
    return splits


def _state_values(state):
    return tuple(getattr(state, name) for name in STATE_FIELDS)


def write_rule_states(states):
    """Store the evaluated fields of ``states`` in one statement; their rows must be locked by this transaction."""
    update_from_values(
        AlarmRuleState._meta.db_table,
        ("rule_id", "bigint"),
        STATE_COLUMNS,
        [(state.rule_id, *_state_values(state)) for state in states],
    )


def lock_rule_states(rules):
    """Return {rule id: state} of ``rules``, locked for this transaction and created where missing.

    Locking in rule order serialises concurrent evaluations of one rule
    without deadlocks between them.
    """
    states = {
        state.rule_id: state
        for state in AlarmRuleState.objects.select_for_update().filter(rule__in=rules).order_by("rule_id")
    }
    missing = [rule for rule in rules if rule.pk not in states]
    if missing:
        AlarmRuleState.objects.bulk_create([AlarmRuleState(rule=rule) for rule in missing], ignore_conflicts=True)
        states.update(
            (state.rule_id, state)
            for state in AlarmRuleState.objects.select_for_update().filter(rule__in=missing).order_by("rule_id")
        )
    return states


def _cached_live_times(schema, sensor_ids):
    """Return the cached live time of sensors whose live value this batch did not change."""
    if not sensor_ids:
        return {}
    try:
        return {sensor_id: entry[0] for sensor_id, entry in latest.get_latest(schema, sensor_ids).items()}
    except redis.RedisError:
        # Without the cache, the evaluator's own last live time decides below.
        logger.exception("Reading live values failed for schema %s; deciding backfill by the rule state", schema)
        return {}


def _split_live(readings, state, changed_live_value, cached_live_time):
    """Split time-ordered ``readings`` into the live ones and the backfill older than the live value."""
    cutoff = state.last_sample_time
    if not changed_live_value and cached_live_time is not None:
        cutoff = max(cutoff, cached_live_time) if cutoff else cached_live_time
    if cutoff is None:
        return readings, []
    live = [sample for sample in readings if sample.time > cutoff]
    backfill = [sample for sample in readings if sample.time <= cutoff]
    return live, backfill


def newest_stored_before(batches):
    """Return {sensor id: time of its newest stored reading that is older than its batch and not in it}.

    ``batches`` maps sensor ids to their time-ordered readings of this
    batch, which ingest stored already. A rule without state treats readings
    up to that time as history. Sensors without such a reading are left out.
    """
    if not batches:
        return {}
    rows = [
        (sensor_id, readings[-1].time, [sample.time for sample in readings]) for sensor_id, readings in batches.items()
    ]
    sql = (
        f"SELECT v.sensor_id, (SELECT r.time FROM {Reading._meta.db_table} AS r "
        "WHERE r.sensor_id = v.sensor_id AND r.time < v.last_time AND r.time <> ALL (v.batch_times) "
        "ORDER BY r.time DESC LIMIT 1) "
        f"FROM (VALUES {', '.join(['(%s::bigint, %s::timestamptz, %s::timestamptz[])'] * len(rows))}) "
        "AS v (sensor_id, last_time, batch_times)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
        return {sensor_id: time for sensor_id, time in cursor.fetchall() if time is not None}


def live_setpoints(schema, rules):
    """Return {rule id: setpoint} of the deviation rules in ``rules``; a setpoint sensor without a value is left out.

    The setpoint is the setpoint sensor's live value when the batch is evaluated.
    """
    setpoints = {}
    sensor_rules = []
    for rule in rules:
        if rule.condition != Condition.DEVIATION:
            continue
        if rule.setpoint_sensor_id is None:
            setpoints[rule.pk] = rule.setpoint
        else:
            sensor_rules.append(rule)
    if not sensor_rules:
        return setpoints

    sensor_ids = {rule.setpoint_sensor_id for rule in sensor_rules}
    values = {}
    try:
        for sensor_id, (_time, value, quality) in latest.get_latest(schema, sensor_ids).items():
            if value is not None and not is_bad(quality):
                values[sensor_id] = value
    except redis.RedisError:
        logger.exception("Reading live setpoints failed for schema %s; using stored readings", schema)
    for sensor_id in sensor_ids - set(values):
        stored = (
            Reading.objects.filter(sensor_id=sensor_id, value__isnull=False, quality__lt=Quality.BAD)
            .order_by("-time")
            .values_list("value", flat=True)
            .first()
        )
        if stored is not None:
            values[sensor_id] = stored
    for rule in sensor_rules:
        if rule.setpoint_sensor_id in values:
            setpoints[rule.pk] = values[rule.setpoint_sensor_id]
        else:
            logger.warning("Rule %s: setpoint sensor %s has no good value; deviation not evaluated", rule.pk, rule.setpoint_sensor_id)
    return setpoints


def new_tracker(rule, *, before, setpoint=None, **state):
    """Return a tracker for ``rule``; for a rate-of-change rule its window contains the good readings stored before ``before``."""
    tracker = ConditionTracker(setpoint=setpoint, **state)
    if rule.condition == Condition.RATE_OF_CHANGE:
        window = (
            Reading.objects.filter(
                sensor_id=rule.sensor_id,
                time__gte=before - timedelta(seconds=rule.rate_window),
                time__lt=before,
                value__isnull=False,
                quality__lt=Quality.BAD,
            )
            .order_by("time")
            .values_list("time", "value")
        )
        tracker.history = deque(window)
        if not tracker.history:
            # The newest reading before the window is the reference across a gap.
            previous = (
                Reading.objects.filter(
                    sensor_id=rule.sensor_id, time__lt=before, value__isnull=False, quality__lt=Quality.BAD
                )
                .order_by("-time")
                .values_list("time", "value")
                .first()
            )
            if previous is not None:
                tracker.history.append(previous)
    return tracker


def _evaluate_live(rule, state, readings, changes, setpoint=None):
    tracker = _tracker_from_state(rule, state, before=readings[0].time, setpoint=setpoint)
    for sample in readings:
        event = tracker.feed(rule, sample.time, sample.value, sample.quality)
        if event is not None:
            changes.add(rule, event)

    newest = readings[-1]
    _store_tracker(state, tracker)
    state.last_sample_time = newest.time
    state.last_value = newest.value
    state.last_quality = int(newest.quality)


def _evaluate_setpoint_change(rule, state, setpoint_readings, changes, setpoint):
    """Evaluate a deviation rule's last process value again against a new live setpoint.

    The evaluation time is the newest setpoint reading, or the last process
    reading when that is newer, so the rule's evaluated time never goes back.
    """
    if setpoint is None or state.last_sample_time is None or state.last_quality is None:
        return
    time = max(max(sample.time for sample in setpoint_readings), state.last_sample_time)
    tracker = _tracker_from_state(rule, state, before=time, setpoint=setpoint)
    event = tracker.feed(rule, time, state.last_value, state.last_quality)
    if event is not None:
        changes.add(rule, event)
    _store_tracker(state, tracker)
    # Later process readings up to this time count as backfill, because the rule has been evaluated up to it.
    state.last_sample_time = time


def _tracker_from_state(rule, state, *, before, setpoint):
    return new_tracker(
        rule,
        before=before,
        setpoint=setpoint,
        active=state.condition_active,
        pending_since=state.pending_since,
        clear_pending_since=state.clear_pending_since,
    )


def _store_tracker(state, tracker):
    state.condition_active = tracker.active
    state.pending_since = tracker.pending_since
    state.clear_pending_since = tracker.clear_pending_since


def activate(rule, activation):
    """Apply an activation of ``rule``'s condition to its open occurrence, or open a new one."""
    for _attempt in range(MAX_ATTEMPTS):
        current = Alarm.objects.open().select_related("rule").filter(rule=rule).first()
        if current is None:
            suppressed = rule.sensor.unit.status != UnitStatus.IN_SERVICE
            alarm = open_alarm(
                rule=rule,
                state=AlarmState.SUPPRESSED if suppressed else AlarmState.ACTIVE_UNACKNOWLEDGED,
                action=TransitionAction.SUPPRESS if suppressed else TransitionAction.ACTIVATE,
                time=activation.time,
                condition_started_at=activation.condition_started_at,
                value=activation.value,
                comment=f"Unit is {rule.sensor.unit.get_status_display().lower()}." if suppressed else "",
            )
            logger.info("Alarm %s of rule %s activated at %s", alarm.pk, rule.pk, activation.time.isoformat())
            return alarm
        if current.state == AlarmState.RETURNED_UNACKNOWLEDGED:
            changed = change_state(
                current,
                to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
                action=TransitionAction.ACTIVATE,
                time=activation.time,
                value=activation.value,
                condition_active=True,
                returned_at=None,
            )
        elif current.state in (AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.ACTIVE_ACKNOWLEDGED):
            logger.warning("Alarm %s of rule %s is already active; activation ignored", current.pk, rule.pk)
            return current
        else:
            # Shelved, suppressed or out of service: track the condition without annunciating it.
            changed = change_state(
                current,
                to_state=current.state,
                action=TransitionAction.ACTIVATE,
                time=activation.time,
                value=activation.value,
                condition_active=True,
                returned_at=None,
            )
        if changed:
            return current
    raise RuntimeError(f"Alarm rule {rule.pk}: its open alarm kept changing during activation; giving up.")


def clear(rule, *, time, value):
    """Apply the return to normal of ``rule``'s condition to its open occurrence."""
    for _attempt in range(MAX_ATTEMPTS):
        current = Alarm.objects.open().select_related("rule").filter(rule=rule).first()
        if current is None or not current.condition_active:
            return current
        fields = {"condition_active": False, "returned_at": time}
        if current.state == AlarmState.ACTIVE_UNACKNOWLEDGED:
            to_state = AlarmState.RETURNED_UNACKNOWLEDGED
        elif current.state in (AlarmState.ACTIVE_ACKNOWLEDGED, AlarmState.SUPPRESSED):
            to_state = AlarmState.NORMAL
            fields["closed_at"] = time
        else:
            to_state = current.state
        if change_state(current, to_state=to_state, action=TransitionAction.RETURN, time=time, value=value, **fields):
            return current
    raise RuntimeError(f"Alarm rule {rule.pk}: its open alarm kept changing during return to normal; giving up.")


def _record_backfill(rule, readings, setpoint=None):
    """Replay backfilled ``readings`` and store each excursion in them as a closed historical occurrence.

    The replay starts from the stored reading just before the first one, so
    an excursion already in progress there is not raised a second time.
    """
    tracker = new_tracker(rule, before=readings[0].time, setpoint=setpoint)
    previous = (
        Reading.objects.filter(sensor_id=rule.sensor_id, time__lt=readings[0].time)
        .order_by("-time")
        .values_list("value", "quality")
        .first()
    )
    if previous is not None and rule.condition != Condition.RATE_OF_CHANGE:
        tracker.active = bool(raw_condition(rule, previous[0], previous[1], False, setpoint=setpoint))

    activation = None
    for sample in readings:
        event = tracker.feed(rule, sample.time, sample.value, sample.quality)
        if isinstance(event, Activation):
            activation = event
        elif event is not None and activation is not None:
            _store_backfilled(rule, activation, returned_at=event.time)
            activation = None

    if activation is not None:
        returned_at = _first_clear_after(rule, tracker, readings[-1].time)
        if returned_at is not None:
            _store_backfilled(rule, activation, returned_at=returned_at)
        else:
            # TODO: an excursion that runs on into the readings after the backlog belongs to a
            # later occurrence (or is still active), so it is not recorded as history of its own.
            logger.info(
                "Rule %s: backfilled excursion from %s runs on past the backlog; not recorded separately",
                rule.pk,
                activation.condition_started_at.isoformat(),
            )


def _first_clear_after(rule, tracker, after):
    """Return when the condition in progress at ``after`` cleared in stored history, if the next reading clears it."""
    following = (
        Reading.objects.filter(sensor_id=rule.sensor_id, time__gt=after)
        .order_by("time")
        .values_list("time", "value", "quality")
        .first()
    )
    if following is None:
        return None
    time, value, quality = following
    if raw_condition(rule, value, quality, tracker.active, setpoint=tracker.setpoint) is False:
        return time
    return None


def _store_backfilled(rule, activation, *, returned_at):
    alarm = open_alarm(
        rule=rule,
        state=AlarmState.NORMAL,
        action=TransitionAction.BACKFILL,
        time=activation.time,
        condition_started_at=activation.condition_started_at,
        value=activation.value,
        comment="Recorded from readings older than the live value; not annunciated.",
        condition_active=False,
        returned_at=returned_at,
        closed_at=returned_at,
        backfilled=True,
    )
    logger.info(
        "Backfilled alarm %s of rule %s recorded for %s to %s",
        alarm.pk,
        rule.pk,
        activation.time.isoformat(),
        returned_at.isoformat(),
    )
    return alarm
