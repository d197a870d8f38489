"""Suggested on-delay and deadband for a chattering alarm, computed from its own history.

An on-delay longer than an excursion keeps that excursion from raising the
alarm. A deadband deeper than a dip keeps the alarm active through the dip,
so the alarm does not return and re-activate. Each suggestion covers 90 % of
the excursions or dips in the window, so one outlier does not dictate it.
"""

import math
from dataclasses import dataclass
from itertools import pairwise

from django.db.models import Max, Min

from apps.telemetry.models import Reading

from .choices import HIGH_LIMITS, LIMIT_CONDITIONS, TransitionAction
from .models import AlarmTransition

SUGGESTION_QUANTILE = 0.9


@dataclass
class Suggestion:
    on_delay: float | None
    deadband: float | None


def suggest_settings(rule, start, end):
    """Return the on-delay (s) and deadband (engineering units) that would have calmed ``rule`` in [start, end).

    Either is None when the window has no complete excursion or dip to learn
    from; the deadband is None for rules without a limit.
    """
    events = list(
        AlarmTransition.objects.filter(
            alarm__rule=rule,
            alarm__backfilled=False,
            action__in=[TransitionAction.ACTIVATE, TransitionAction.RETURN],
            time__gte=start,
            time__lt=end,
        )
        .order_by("time", "id")
        .values_list("action", "time")
    )
    excursions = []
    dips = []
    for (action, time), (next_action, next_time) in pairwise(events):
        if action == TransitionAction.ACTIVATE and next_action == TransitionAction.RETURN:
            excursions.append((next_time - time).total_seconds())
        elif action == TransitionAction.RETURN and next_action == TransitionAction.ACTIVATE:
            dips.append((time, next_time))

    on_delay = None
    if excursions:
        # The condition had already held for the current on-delay when the alarm activated.
        on_delay = float(math.ceil(rule.on_delay + _quantile(excursions)))
    deadband = None
    if rule.condition in LIMIT_CONDITIONS:
        depths = [_dip_depth(rule, returned, reactivated) for returned, reactivated in dips]
        depths = [depth for depth in depths if depth is not None]
        if depths:
            step = 10.0**-rule.sensor.decimals
            deadband = round(math.ceil(_quantile(depths) / step - 1e-9) * step, rule.sensor.decimals)
    return Suggestion(on_delay=on_delay, deadband=deadband)


def _dip_depth(rule, returned_at, reactivated_at):
    """Return how far past the limit the value went between a return and the next activation."""
    extremes = Reading.objects.filter(
        sensor_id=rule.sensor_id, time__gte=returned_at, time__lt=reactivated_at, value__isnull=False
    ).aggregate(lowest=Min("value"), highest=Max("value"))
    if rule.condition in HIGH_LIMITS:
        return None if extremes["lowest"] is None else rule.limit - extremes["lowest"]
    return None if extremes["highest"] is None else extremes["highest"] - rule.limit


def _quantile(values):
    """Return the nearest-rank quantile SUGGESTION_QUANTILE of ``values``."""
    ordered = sorted(values)
    return ordered[math.ceil(SUGGESTION_QUANTILE * len(ordered)) - 1]
