from django.db import models


class Condition(models.TextChoices):
    """Condition an alarm rule watches on its sensor."""

    HIGH_HIGH = "hihi", "High-high limit"
    HIGH = "hi", "High limit"
    LOW = "lo", "Low limit"
    LOW_LOW = "lolo", "Low-low limit"
    BAD_QUALITY = "bad_quality", "Bad quality"
    STALE = "stale", "Stale data"
    DIGITAL = "digital", "Digital state"
    RATE_OF_CHANGE = "roc", "Rate of change"
    DEVIATION = "deviation", "Deviation from setpoint"
    DEVICE_OFFLINE = "device_offline", "Device offline"


HIGH_LIMITS = frozenset({Condition.HIGH_HIGH, Condition.HIGH})
LOW_LIMITS = frozenset({Condition.LOW, Condition.LOW_LOW})
LIMIT_CONDITIONS = HIGH_LIMITS | LOW_LIMITS


class AlarmSource(models.TextChoices):
    """Origin of an alarm: a rule on a sensor, or the security monitoring of the audit trail."""

    PROCESS = "process", "Process"
    SECURITY = "security", "Security"


class RatePer(models.TextChoices):
    """Time unit of a rate-of-change limit."""

    SECOND = "second", "Per second"
    MINUTE = "minute", "Per minute"


RATE_PER_SECONDS = {RatePer.SECOND: 1.0, RatePer.MINUTE: 60.0}


class Priority(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


PRIORITY_RANK = {priority: rank for rank, priority in enumerate(Priority.values)}


class AlarmState(models.TextChoices):
    """Alarm states of the ISA-18.2 (IEC 62682) state model."""

    NORMAL = "normal", "Normal"
    ACTIVE_UNACKNOWLEDGED = "active_unack", "Active, unacknowledged"
    ACTIVE_ACKNOWLEDGED = "active_ack", "Active, acknowledged"
    RETURNED_UNACKNOWLEDGED = "rtn_unack", "Returned to normal, unacknowledged"
    SHELVED = "shelved", "Shelved"
    SUPPRESSED = "suppressed", "Suppressed by design"
    OUT_OF_SERVICE = "out_of_service", "Out of service"


# States of an occurrence that is still open; NORMAL closes it for good.
OPEN_STATES = frozenset(state for state in AlarmState if state != AlarmState.NORMAL)
UNACKNOWLEDGED_STATES = frozenset({AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.RETURNED_UNACKNOWLEDGED})


class TransitionAction(models.TextChoices):
    ACTIVATE = "activate", "Condition became active"
    RETURN = "return", "Condition returned to normal"
    ACKNOWLEDGE = "acknowledge", "Acknowledged"
    SHELVE = "shelve", "Shelved"
    UNSHELVE = "unshelve", "Unshelved"
    SHELF_EXPIRED = "shelf_expired", "Shelving expired"
    SUPPRESS = "suppress", "Suppressed by design"
    UNSUPPRESS = "unsuppress", "Suppression ended"
    REALARM = "realarm", "Re-alarmed while still active"
    REMOVE_FROM_SERVICE = "remove_from_service", "Removed from service"
    RETURN_TO_SERVICE = "return_to_service", "Returned to service"
    BACKFILL = "backfill", "Recorded from backfilled readings"
    ESCALATE = "escalate", "Escalated while unacknowledged"
    RETRIGGER = "retrigger", "Triggered again while active"


# States an operator sees in the alarm list and banner; only these can be shelved.
ANNUNCIATED_STATES = frozenset(
    {AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.ACTIVE_ACKNOWLEDGED, AlarmState.RETURNED_UNACKNOWLEDGED}
)


class TargetKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook (HMAC-SHA256 signed)"


class TargetPurpose(models.TextChoices):
    """Which alarm events a notification target receives."""

    ANNUNCIATION = "annunciation", "Alarms as they are annunciated"
    ESCALATION = "escalation", "Critical alarms left unacknowledged"


class NotificationEvent(models.TextChoices):
    ANNUNCIATED = "annunciated", "Alarm annunciated"
    ESCALATED = "escalated", "Alarm escalated"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Failed, retrying"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed after all retries"
