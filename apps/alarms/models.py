from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from apps.sensors.models import Sensor
from apps.units.models import Unit

from .choices import (
    ANNUNCIATED_STATES,
    LIMIT_CONDITIONS,
    OPEN_STATES,
    UNACKNOWLEDGED_STATES,
    AlarmState,
    Condition,
    Priority,
    TransitionAction,
)


class AlarmRuleQuerySet(models.QuerySet):
    def evaluated(self):
        """Rules the evaluator applies to new readings: enabled and in service."""
        return self.filter(enabled=True, in_service=True)


class AlarmRule(models.Model):
    """One alarm condition on one sensor, such as "supply temperature above 95 °C".

    Each limit is a rule of its own, so HI and HIHI are two alarms with their
    own priority and state. ``deadband`` applies when the condition clears: a
    HI alarm at 100 with a deadband of 2 returns to normal below 98.
    """

    sensor = models.ForeignKey(Sensor, on_delete=models.CASCADE, related_name="alarm_rules")
    condition = models.CharField(max_length=16, choices=Condition.choices)
    limit = models.FloatField(null=True, blank=True, help_text="Alarm limit in engineering units (limit rules only).")
    deadband = models.FloatField(
        default=0.0, help_text="Engineering units the value must clear the limit by to return to normal."
    )
    on_delay = models.FloatField(default=0.0, help_text="Seconds the condition must hold before the alarm activates.")
    off_delay = models.FloatField(
        default=0.0, help_text="Seconds the condition must stay clear before the alarm returns to normal."
    )
    realarm_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds an acknowledged alarm may stay active before it is annunciated again; empty for never.",
    )
    stale_after = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds without a reading after which a stale-data rule activates."
    )
    alarm_state_value = models.IntegerField(
        null=True, blank=True, help_text="Value of a digital sensor that is the alarm state, e.g. 1 for 'tripped'."
    )
    priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.MEDIUM)
    message = models.CharField(
        max_length=200, blank=True, help_text="Text shown to the operator; defaults to the condition."
    )
    rationale = models.TextField(blank=True, help_text="Why this alarm exists and what the operator should do.")
    enabled = models.BooleanField(default=True)
    in_service = models.BooleanField(
        default=True, help_text="False while the rule is out of service, e.g. for a broken instrument."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AlarmRuleQuerySet.as_manager()

    class Meta:
        ordering = ["sensor", "condition"]
        constraints = [
            models.UniqueConstraint(fields=["sensor", "condition"], name="alarms_rule_unique_condition_per_sensor"),
            models.CheckConstraint(
                condition=~Q(condition__in=sorted(LIMIT_CONDITIONS)) | Q(limit__isnull=False),
                name="alarms_rule_limit_required",
            ),
            models.CheckConstraint(
                condition=~Q(condition=Condition.STALE) | Q(stale_after__gt=0),
                name="alarms_rule_stale_after_required",
            ),
            models.CheckConstraint(
                condition=~Q(condition=Condition.DIGITAL) | Q(alarm_state_value__isnull=False),
                name="alarms_rule_alarm_state_value_required",
            ),
            models.CheckConstraint(
                condition=Q(deadband__gte=0) & Q(on_delay__gte=0) & Q(off_delay__gte=0),
                name="alarms_rule_delays_and_deadband_not_negative",
            ),
        ]

    def __str__(self):
        return f"{self.sensor} {self.get_condition_display()}"

    def clean(self):
        errors = {}
        if self.condition in LIMIT_CONDITIONS and self.limit is None:
            errors["limit"] = f"A {self.get_condition_display().lower()} rule needs a limit in engineering units."
        if self.condition == Condition.STALE and not self.stale_after:
            errors["stale_after"] = "A stale-data rule needs stale_after, the seconds without a reading, above 0."
        if self.condition == Condition.DIGITAL and self.alarm_state_value is None:
            errors["alarm_state_value"] = "A digital-state rule needs alarm_state_value, the value that means alarm."
        for name in ("deadband", "on_delay", "off_delay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                errors[name] = f"{name} is {value}; it must be 0 or more."
        if errors:
            raise ValidationError(errors)

    @property
    def text(self):
        if self.message:
            return self.message
        if self.condition in LIMIT_CONDITIONS:
            return f"{self.sensor.name} {self.get_condition_display().lower()} {self.limit:g}"
        return f"{self.sensor.name} {self.get_condition_display().lower()}"


class AlarmRuleState(models.Model):
    """The evaluator's memory of one rule between batches of readings.

    ``pending_since`` is when the condition started while the on-delay still
    runs; ``clear_pending_since`` the same for the off-delay. ``last_sample_time``
    is the newest reading evaluated live: older readings are backfill.
    """

    rule = models.OneToOneField(AlarmRule, on_delete=models.CASCADE, primary_key=True, related_name="state")
    condition_active = models.BooleanField(default=False)
    pending_since = models.DateTimeField(null=True, blank=True)
    clear_pending_since = models.DateTimeField(null=True, blank=True)
    last_sample_time = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_quality = models.SmallIntegerField(null=True, blank=True)

    def __str__(self):
        return f"state of rule {self.rule_id}"


class AlarmQuerySet(models.QuerySet):
    def open(self):
        return self.filter(state__in=sorted(OPEN_STATES))

    def active(self):
        """Occurrences whose condition is active now, shelved and suppressed ones included."""
        return self.open().filter(condition_active=True)

    def unacknowledged(self):
        return self.filter(state__in=sorted(UNACKNOWLEDGED_STATES))

    def annunciated(self):
        """Occurrences an operator sees in the alarm list: not shelved, suppressed or out of service."""
        return self.filter(state__in=sorted(ANNUNCIATED_STATES))

    def for_unit(self, unit):
        return self.filter(unit=unit)


# Users exist in the public schema too, where there are no alarm tables. If
# Django or the database followed these keys on delete, deleting a public user
# would fail. So alarm records keep a deleted user's id as history, and the
# managers join users so that such an id reads as no user.
USER_REFERENCE = {
    "on_delete": models.DO_NOTHING,
    "db_constraint": False,
    "null": True,
    "blank": True,
    "related_name": "+",
}


class AlarmManager(models.Manager.from_queryset(AlarmQuerySet)):
    def get_queryset(self):
        return super().get_queryset().select_related("acknowledged_by", "shelved_by")


class Alarm(models.Model):
    """One occurrence of an alarm rule, from activation until it is back to normal and acknowledged.

    ``condition_started_at`` is the first reading in alarm; with an on-delay
    the occurrence activates later, at ``activated_at``. A backfilled
    occurrence comes from readings older than the live value, so it was
    recorded as history and never annunciated.
    """

    rule = models.ForeignKey(AlarmRule, on_delete=models.CASCADE, related_name="alarms")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="alarms")
    priority = models.CharField(max_length=16, choices=Priority.choices)
    message = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=AlarmState.choices)
    condition_active = models.BooleanField(default=True)
    condition_started_at = models.DateTimeField()
    activated_at = models.DateTimeField()
    activation_value = models.FloatField(null=True, blank=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_REFERENCE)
    shelved_until = models.DateTimeField(null=True, blank=True)
    shelve_reason = models.CharField(max_length=500, blank=True)
    shelved_by = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_REFERENCE)
    closed_at = models.DateTimeField(null=True, blank=True)
    backfilled = models.BooleanField(default=False)

    objects = AlarmManager()

    class Meta:
        ordering = ["-activated_at", "-id"]
        constraints = [
            # Backfilled occurrences are closed history, so they never count here.
            models.UniqueConstraint(
                fields=["rule"],
                condition=~Q(state=AlarmState.NORMAL),
                name="alarms_alarm_one_open_per_rule",
            ),
            models.CheckConstraint(
                condition=~Q(state=AlarmState.SHELVED) | Q(shelved_until__isnull=False),
                name="alarms_alarm_shelved_has_expiry",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "unit"], name="alarms_alarm_state_unit_idx"),
            models.Index(fields=["activated_at"], name="alarms_alarm_activated_idx"),
        ]

    def __str__(self):
        return f"{self.message} ({self.get_state_display()})"

    @property
    def acknowledged(self):
        return self.acknowledged_at is not None


class AlarmTransitionManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().select_related("actor")


class AlarmTransition(models.Model):
    """One entry in an occurrence's log: a state change, or an event that left the state as it was.

    ``actor`` is the user for operator actions and empty for the evaluator.
    ``time`` is when the change took effect: the reading's time for changes
    of the condition, the server time for operator actions.
    """

    alarm = models.ForeignKey(Alarm, on_delete=models.CASCADE, related_name="transitions")
    time = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    action = models.CharField(max_length=32, choices=TransitionAction.choices)
    from_state = models.CharField(max_length=16, choices=AlarmState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=AlarmState.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, **USER_REFERENCE)
    comment = models.TextField(blank=True)
    value = models.FloatField(null=True, blank=True)

    objects = AlarmTransitionManager()

    class Meta:
        ordering = ["recorded_at", "id"]
        indexes = [models.Index(fields=["time"], name="alarms_transition_time_idx")]

    def __str__(self):
        return f"alarm {self.alarm_id}: {self.from_state or '-'} -> {self.to_state} ({self.action})"
