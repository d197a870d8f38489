"""Condition tracking of one alarm rule over readings in time order, without database access.

The evaluator feeds each reading to a ``ConditionTracker``, which applies
the limit with its deadband and the on-delay and off-delay, and returns an
``Activation`` or a ``Return`` when the debounced condition changes.
"""

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from apps.sensors.quality import Quality, is_bad

from .choices import HIGH_LIMITS, LOW_LIMITS, RATE_PER_SECONDS, Condition


@dataclass(frozen=True, slots=True)
class Activation:
    time: datetime
    condition_started_at: datetime
    value: float | None


@dataclass(frozen=True, slots=True)
class Return:
    time: datetime
    value: float | None


def raw_condition(rule, value, quality, active, *, rate=None, setpoint=None):
    """Return whether one reading is in alarm, or None when it carries no information about the condition.

    A reading with bad quality has no value, so limit and digital rules keep
    their state through it, and the bad-quality rule covers that case. A
    limit alarm activates at the limit and clears once the value is past the
    limit by more than the deadband. ``rate`` (units per second) and
    ``setpoint`` are the context of rate-of-change and deviation rules.
    """
    condition = rule.condition
    if condition == Condition.BAD_QUALITY:
        return is_bad(quality)
    if condition == Condition.DEVICE_OFFLINE:
        # Protocol code stores a comm-lost reading when a device stops responding. Any other reading means it responded.
        return quality == Quality.BAD_COMM_LOST
    if condition == Condition.STALE:
        # Any reading is fresh data; the periodic check raises stale alarms.
        return False
    if value is None or is_bad(quality):
        return None
    deadband = rule.deadband if active else 0.0
    if condition == Condition.RATE_OF_CHANGE:
        if rate is None:
            return None
        return abs(rate) * RATE_PER_SECONDS[rule.rate_per] >= rule.limit - deadband
    if condition == Condition.DEVIATION:
        if setpoint is None:
            return None
        return abs(value - setpoint) >= rule.band - deadband
    if condition in HIGH_LIMITS:
        return value >= rule.limit - deadband
    if condition in LOW_LIMITS:
        return value <= rule.limit + deadband
    if condition == Condition.DIGITAL:
        return round(value) == rule.alarm_state_value
    raise ValueError(f"Alarm rule {rule.pk} has unknown condition {condition!r}.")


@dataclass(slots=True)
class ConditionTracker:
    """Debounced condition of one rule, whose first three fields mirror ``AlarmRuleState``.

    ``history`` contains the (time, value) readings of a rate-of-change rule's
    window, oldest first, and ``setpoint`` the setpoint of a deviation rule.
    """

    active: bool = False
    pending_since: datetime | None = None
    clear_pending_since: datetime | None = None
    history: deque = field(default_factory=deque)
    setpoint: float | None = None

    def feed(self, rule, time, value, quality):
        """Apply one reading and return the ``Activation`` or ``Return`` it causes, if any."""
        rate = None
        if rule.condition == Condition.RATE_OF_CHANGE and value is not None and not is_bad(quality):
            rate = self._rate(rule, time, value)
        in_alarm = raw_condition(rule, value, quality, self.active, rate=rate, setpoint=self.setpoint)
        if in_alarm is None:
            return None

        if not self.active:
            if not in_alarm:
                self.pending_since = None
                return None
            if self.pending_since is None:
                self.pending_since = time
            # Without further readings the periodic timer activates the alarm once the on-delay has run.
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

    def _rate(self, rule, time, value):
        """Return the rate in units per second from the oldest reading in the window to this one.

        Without an earlier reading in the window the newest one before it is
        the reference, so an alarm can clear after a gap in the readings.
        """
        window_start = time - timedelta(seconds=rule.rate_window)
        before_window = None
        while self.history and self.history[0][0] < window_start:
            before_window = self.history.popleft()
        oldest = self.history[0] if self.history else before_window
        self.history.append((time, value))
        if oldest is None or oldest[0] >= time:
            return None
        return (value - oldest[1]) / (time - oldest[0]).total_seconds()
