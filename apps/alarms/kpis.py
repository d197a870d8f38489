"""Alarm system performance figures of the kind ISA-18.2 and EEMUA 191 recommend, over a time window.

An annunciated alarm is an activation that reached the operator: a new
occurrence, or a returned one that became active again. Backfilled,
suppressed and shelved activations are not counted. The tenant is treated
as one operator position. Security alarms go to administrators, not to the
plant operator, so they are left out of every figure.
"""

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q

from .chatter import suggest_settings
from .choices import AlarmSource, AlarmState, Priority, TransitionAction
from .models import Alarm, AlarmRule, AlarmTransition

BUCKET = timedelta(minutes=10)
# More than 10 annunciated alarms in 10 minutes per operator is an alarm flood.
FLOOD_THRESHOLD = 10
# An alarm chatters when it activates 3 or more times within 60 s.
CHATTER_COUNT = 3
CHATTER_WINDOW = timedelta(seconds=60)
# An occurrence that returns to normal sooner than this after activating is a fleeting alarm.
FLEETING_SHORTER_THAN = timedelta(seconds=5)
# An alarm standing for more than a day is a stale alarm.
STALE_AFTER = timedelta(hours=24)
TOP_BAD_ACTORS = 10


@dataclass
class BadActor:
    rule_id: int
    message: str
    count: int
    share_percent: float


@dataclass
class ChatteringAlarm:
    rule_id: int
    message: str
    activations: int
    suggested_on_delay: float | None
    suggested_deadband: float | None


@dataclass
class AlarmKpis:
    start: datetime
    end: datetime
    annunciated: int = 0
    average_per_10_minutes: float = 0.0
    max_per_10_minutes: int = 0
    flood_percent: float = 0.0
    chattering: list[ChatteringAlarm] = field(default_factory=list)
    fleeting: int = 0
    fleeting_rule_ids: list[int] = field(default_factory=list)
    stale_alarm_ids: list[int] = field(default_factory=list)
    bad_actors: list[BadActor] = field(default_factory=list)
    priority_distribution: dict[str, float] = field(default_factory=dict)


def compute_kpis(start, end, *, fleeting_shorter_than=FLEETING_SHORTER_THAN):
    """Compute the alarm KPIs of annunciated activations in [start, end).

    Rates and flood use fixed 10-minute intervals from ``start``; a final
    interval shorter than 10 minutes counts as a whole one. A fleeting alarm
    is an activation whose condition returned within ``fleeting_shorter_than``.
    """
    if start >= end:
        raise ValueError(f"KPI window start {start.isoformat()} must be before end {end.isoformat()}.")
    activations = list(
        AlarmTransition.objects.filter(
            Q(from_state="") | Q(from_state=AlarmState.RETURNED_UNACKNOWLEDGED),
            alarm__source=AlarmSource.PROCESS,
            action=TransitionAction.ACTIVATE,
            to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
            time__gte=start,
            time__lt=end,
        )
        .order_by("time")
        .values_list("time", "alarm__rule_id", "alarm__priority", "alarm__message")
    )
    kpis = AlarmKpis(start=start, end=end, annunciated=len(activations))

    buckets = math.ceil((end - start) / BUCKET)
    per_bucket = Counter(int((time - start) // BUCKET) for time, *_rest in activations)
    kpis.average_per_10_minutes = round(len(activations) / buckets, 2)
    kpis.max_per_10_minutes = max(per_bucket.values(), default=0)
    flooded = sum(1 for count in per_bucket.values() if count > FLOOD_THRESHOLD)
    kpis.flood_percent = round(100.0 * flooded / buckets, 2)

    kpis.chattering = _chattering(activations, start, end)
    kpis.fleeting, kpis.fleeting_rule_ids = _fleeting(start, end, fleeting_shorter_than)
    kpis.stale_alarm_ids = list(
        Alarm.objects.process()
        .active()
        .filter(activated_at__lte=end - STALE_AFTER)
        .order_by("activated_at")
        .values_list("pk", flat=True)
    )
    kpis.bad_actors = _bad_actors(activations)
    by_priority = Counter(priority for _time, _rule, priority, _message in activations)
    kpis.priority_distribution = {
        priority: round(100.0 * by_priority[priority] / len(activations), 2) if activations else 0.0
        for priority in Priority.values
    }
    return kpis


def _chattering(activations, start, end):
    times_by_rule = defaultdict(list)
    messages = {}
    for time, rule_id, _priority, message in activations:
        times_by_rule[rule_id].append(time)
        messages[rule_id] = message
    chattering_ids = []
    for rule_id, times in times_by_rule.items():
        # Times are sorted, so a window of CHATTER_COUNT consecutive activations is the tightest.
        for first, last in zip(times, times[CHATTER_COUNT - 1 :], strict=False):
            if last - first <= CHATTER_WINDOW:
                chattering_ids.append(rule_id)
                break

    chattering = []
    for rule in AlarmRule.objects.filter(pk__in=chattering_ids).select_related("sensor").order_by("pk"):
        suggestion = suggest_settings(rule, start, end)
        chattering.append(
            ChatteringAlarm(
                rule_id=rule.pk,
                message=messages[rule.pk],
                activations=len(times_by_rule[rule.pk]),
                suggested_on_delay=suggestion.on_delay,
                suggested_deadband=suggestion.deadband,
            )
        )
    return chattering


def _fleeting(start, end, shorter_than):
    """Return the number of fleeting activations in [start, end) and the ids of their rules.

    Each return to normal is paired with the activation just before it in
    the same occurrence, so a reactivated occurrence counts every excursion.
    """
    transitions = (
        AlarmTransition.objects.filter(
            alarm__source=AlarmSource.PROCESS,
            alarm__backfilled=False,
            action__in=[TransitionAction.ACTIVATE, TransitionAction.RETURN],
            time__gte=start - shorter_than,
            time__lt=end + shorter_than,
        )
        .order_by("alarm_id", "time", "id")
        .values_list("alarm_id", "alarm__rule_id", "action", "time")
    )
    count = 0
    rule_ids = set()
    activated = {}
    for alarm_id, rule_id, action, time in transitions:
        if action == TransitionAction.ACTIVATE:
            activated[alarm_id] = time
            continue
        started = activated.pop(alarm_id, None)
        if started is not None and start <= started < end and time - started < shorter_than:
            count += 1
            rule_ids.add(rule_id)
    return count, sorted(rule_ids)


def _bad_actors(activations):
    counts = Counter(rule_id for _time, rule_id, _priority, _message in activations)
    messages = {rule_id: message for _time, rule_id, _priority, message in activations}
    return [
        BadActor(rule_id, messages[rule_id], count, round(100.0 * count / len(activations), 2))
        for rule_id, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_BAD_ACTORS]
    ]
