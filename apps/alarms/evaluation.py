"""Condition tracking of one alarm rule over readings in time order, without database access.

The evaluator feeds each reading to a ``ConditionTracker``, which applies
the limit with its deadband and the on-delay and off-delay, and returns an
``Activation`` or a ``Return`` when the debounced condition changes.
"""

from dataclasses import dataclass
from datetime import datetime

from apps.sensors.quality import is_bad

from .choices import HIGH_LIMITS, LOW_LIMITS, Condition


@dataclass(frozen=True, slots=True)
class Activation:
    time: datetime
    condition_started_at: datetime
    value: float | None


@dataclass(frozen=True, slots=True)
class Return:
    time: datetime
    value: float | None


def raw_condition(rule, value, quality, active):
    """Return whether one reading is in alarm, or None when it carries no information about the condition.

    A reading with bad quality has no value, so limit and digital rules keep
    their state through it, and the bad-quality rule covers that case. A
    limit alarm activates at the limit and clears once the value is past the
    limit by more than the deadband.
    """
    condition = rule.condition
    if condition == Condition.BAD_QUALITY:
        return is_bad(quality)
    if condition == Condition.STALE:
        # Any reading is fresh data; the periodic check raises stale alarms.
        return False
    if value is None or is_bad(quality):
        return None
    deadband = rule.deadband if active else 0.0
    if condition in HIGH_LIMITS:
        return value >= rule.limit - deadband
    if condition in LOW_LIMITS:
        return value <= rule.limit + deadband
    if condition == Condition.DIGITAL:
        return round(value) == rule.alarm_state_value
    raise ValueError(f"Alarm rule {rule.pk} has unknown condition {condition!r}.")


@dataclass(slots=True)
class ConditionTracker:
    """Debounced condition of one rule; the fields mirror ``AlarmRuleState``."""

    active: bool = False
    pending_since: datetime | None = None
    clear_pending_since: datetime | None = None

    def feed(self, rule, time, value, quality):
        """Apply one reading and return the ``Activation`` or ``Return`` it causes, if any."""
        in_alarm = raw_condition(rule, value, quality, self.active)
        if in_alarm is None:
            return None

        if not self.active:
            if not in_alarm:
                self.pending_since = None
                return None
            if self.pending_since is None:
                self.pending_since = time
            # NOTE: the on-delay is checked only when a reading arrives, so a value that stays in alarm
            # without further readings (report by exception) activates with the next reading, not on time.
            if (time - self.pending_since).total_seconds() < rule.on_delay:
                return None
            started = self.pending_since
            self.active = True
            self.pending_since = None
            self.clear_pending_since = None
            return Activation(time=time, condition_started_at=started, value=value)

        if in_alarm:
            self.clear_pending_since = None
            return None
        if self.clear_pending_since is None:
            self.clear_pending_since = time
        if (time - self.clear_pending_since).total_seconds() < rule.off_delay:
            return None
        self.active = False
        self.clear_pending_since = None
        self.pending_since = None
        return Return(time=time, value=value)
