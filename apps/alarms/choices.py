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


HIGH_LIMITS = frozenset({Condition.HIGH_HIGH, Condition.HIGH})
LOW_LIMITS = frozenset({Condition.LOW, Condition.LOW_LOW})
LIMIT_CONDITIONS = HIGH_LIMITS | LOW_LIMITS


class Priority(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


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


# States an operator sees in the alarm list and banner; only these can be shelved.
ANNUNCIATED_STATES = frozenset(
    {AlarmState.ACTIVE_UNACKNOWLEDGED, AlarmState.ACTIVE_ACKNOWLEDGED, AlarmState.RETURNED_UNACKNOWLEDGED}
)
