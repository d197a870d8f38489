from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q

from apps.sensors.models import Sensor
from apps.units.models import Unit

from .choices import (
    ANNUNCIATED_STATES,
    LIMIT_CONDITIONS,
    OPEN_STATES,
    UNACKNOWLEDGED_STATES,
    AlarmSource,
    AlarmState,
    Condition,
    DeliveryStatus,
    NotificationEvent,
    Priority,
    RatePer,
    TargetKind,
    TargetPurpose,
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
    rate_window = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds of readings a rate-of-change rule compares; the limit is the rate in units per rate_per.",
    )
    rate_per = models.CharField(max_length=8, choices=RatePer.choices, default=RatePer.SECOND)
    setpoint = models.FloatField(null=True, blank=True, help_text="Fixed setpoint of a deviation rule.")
    setpoint_sensor = models.ForeignKey(
        Sensor,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Sensor whose live value is the setpoint of a deviation rule, instead of a fixed setpoint.",
    )
    band = models.FloatField(
        null=True,
        blank=True,
        help_text="Engineering units a deviation rule allows either side of the setpoint before it alarms.",
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
            models.CheckConstraint(
                condition=~Q(condition=Condition.RATE_OF_CHANGE) | Q(limit__gt=0, rate_window__gt=0),
                name="alarms_rule_rate_limit_and_window_required",
            ),
            models.CheckConstraint(
                condition=~Q(condition=Condition.DEVIATION)
                | (Q(band__gt=0) & (Q(setpoint__isnull=True) ^ Q(setpoint_sensor__isnull=True))),
                name="alarms_rule_deviation_band_and_one_setpoint",
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
        if self.condition == Condition.RATE_OF_CHANGE:
            if self.limit is None or self.limit <= 0:
                errors["limit"] = f"A rate-of-change rule needs a limit above 0 in units {self.get_rate_per_display().lower()}."
            if not self.rate_window or self.rate_window <= 0:
                errors["rate_window"] = "A rate-of-change rule needs rate_window, the seconds of readings to compare, above 0."
        if self.condition == Condition.DEVIATION:
            if not self.band or self.band <= 0:
                errors["band"] = "A deviation rule needs band, the allowed deviation in engineering units, above 0."
            if (self.setpoint is None) == (self.setpoint_sensor_id is None):
                errors["setpoint"] = "A deviation rule needs either a fixed setpoint or a setpoint_sensor, not both."
            elif self.setpoint_sensor_id is not None and self.setpoint_sensor_id == self.sensor_id:
                errors["setpoint_sensor"] = "The setpoint sensor must be another sensor than the one the rule watches."
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
        if self.condition == Condition.RATE_OF_CHANGE:
            return f"{self.sensor.name} changing faster than {self.limit:g} {self.get_rate_per_display().lower()}"
        if self.condition == Condition.DEVIATION:
            return f"{self.sensor.name} deviates from setpoint by more than {self.band:g}"
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

    def process(self):
        return self.filter(source=AlarmSource.PROCESS)

    def security(self):
        return self.filter(source=AlarmSource.SECURITY)

    def of_sources(self, sources):
        """Occurrences whose source is one of ``sources``, e.g. the sources a user may see."""
        return self.filter(source__in=sorted(sources))


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
    """One occurrence of an alarm, from activation until it is back to normal and acknowledged.

    A process alarm belongs to a rule and its unit. ``condition_started_at``
    is the first reading in alarm; with an on-delay the occurrence activates
    later, at ``activated_at``. A backfilled occurrence comes from readings
    older than the live value, so it was recorded as history and never
    annunciated.

    A security alarm comes from the audit trail's security monitoring and has
    no rule and no unit. ``key`` names the pattern and its subject, and a
    repeat of the same key while the occurrence is open updates it instead
    of opening another. Its condition returns to normal at ``clears_at``.
    """

    rule = models.ForeignKey(AlarmRule, on_delete=models.CASCADE, null=True, blank=True, related_name="alarms")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, null=True, blank=True, related_name="alarms")
    source = models.CharField(max_length=16, choices=AlarmSource.choices, default=AlarmSource.PROCESS)
    key = models.CharField(
        max_length=200,
        blank=True,
        help_text='Identity of a security alarm: trigger and subject, e.g. "failed_login_burst:username=admin".',
    )
    clears_at = models.DateTimeField(
        null=True, blank=True, help_text="When a security alarm's condition returns to normal unless it repeats."
    )
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
    escalated_at = models.DateTimeField(null=True, blank=True)

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
            models.UniqueConstraint(
                fields=["key"],
                condition=Q(source=AlarmSource.SECURITY) & ~Q(state=AlarmState.NORMAL),
                name="alarms_alarm_one_open_per_security_key",
            ),
            models.CheckConstraint(
                condition=Q(source=AlarmSource.PROCESS, rule__isnull=False, unit__isnull=False)
                | (Q(source=AlarmSource.SECURITY, rule__isnull=True, unit__isnull=True) & ~Q(key="")),
                name="alarms_alarm_rule_and_unit_match_source",
            ),
            models.CheckConstraint(
                condition=~Q(state=AlarmState.SHELVED) | Q(shelved_until__isnull=False),
                name="alarms_alarm_shelved_has_expiry",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "unit"], name="alarms_alarm_state_unit_idx"),
            models.Index(fields=["activated_at"], name="alarms_alarm_activated_idx"),
            models.Index(fields=["source", "state"], name="alarms_alarm_source_state_idx"),
        ]

    def __str__(self):
        return f"{self.message} ({self.get_state_display()})"

    @property
    def acknowledged(self):
        return self.acknowledged_at is not None

    @property
    def is_security(self):
        return self.source == AlarmSource.SECURITY

    @property
    def sensor_id(self):
        """Id of the rule's sensor; None for a security alarm."""
        return self.rule.sensor_id if self.rule_id is not None else None


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


class NotificationTargetQuerySet(models.QuerySet):
    def receiving(self, purpose, priority):
        """Enabled targets of ``purpose`` whose minimum priority ``priority`` reaches."""
        from .choices import PRIORITY_RANK

        allowed = [name for name, rank in PRIORITY_RANK.items() if rank <= PRIORITY_RANK[priority]]
        return self.filter(enabled=True, purpose=purpose, min_priority__in=allowed)


class NotificationTarget(models.Model):
    """A recipient of a tenant's alarm notifications: an email address or a signed webhook, such as the on-call pager.

    Annunciation targets receive each alarm of ``min_priority`` or higher as
    it is annunciated. Escalation targets receive critical alarms still
    unacknowledged ``escalate_after`` minutes after activation. A webhook's
    signing secret is stored encrypted and shown only when it is created.
    """

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    purpose = models.CharField(max_length=16, choices=TargetPurpose.choices, default=TargetPurpose.ANNUNCIATION)
    email = models.EmailField(blank=True)
    # NOTE: any host the server can reach is accepted, including internal ones; only admins configure targets.
    url = models.URLField(
        blank=True,
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="HTTP(S) endpoint that receives the signed POST.",
    )
    secret_encrypted = models.TextField(blank=True, editable=False)
    min_priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.HIGH)
    escalate_after = models.PositiveIntegerField(
        null=True, blank=True, help_text="Minutes a critical alarm stays unacknowledged before escalation."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = NotificationTargetQuerySet.as_manager()

    class Meta:
        ordering = ["purpose", "name"]
        constraints = [
            models.UniqueConstraint(fields=["name"], name="alarms_target_unique_name"),
            models.CheckConstraint(
                condition=~Q(kind=TargetKind.EMAIL) | ~Q(email=""), name="alarms_target_email_required"
            ),
            models.CheckConstraint(
                condition=~Q(kind=TargetKind.WEBHOOK) | (~Q(url="") & ~Q(secret_encrypted="")),
                name="alarms_target_webhook_url_and_secret_required",
            ),
            models.CheckConstraint(
                condition=~Q(purpose=TargetPurpose.ESCALATION) | Q(escalate_after__gt=0),
                name="alarms_target_escalate_after_required",
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()})"

    def clean(self):
        errors = {}
        if self.kind == TargetKind.EMAIL and not self.email:
            errors["email"] = "An email target needs an email address."
        if self.kind == TargetKind.WEBHOOK and not self.url:
            errors["url"] = "A webhook target needs the URL that receives the POST."
        if self.purpose == TargetPurpose.ESCALATION and not self.escalate_after:
            errors["escalate_after"] = "An escalation target needs escalate_after, in minutes, above 0."
        if errors:
            raise ValidationError(errors)


class NotificationDelivery(models.Model):
    """One notification of one alarm event to one target, with the outcome of its delivery attempts."""

    target = models.ForeignKey(NotificationTarget, on_delete=models.CASCADE, related_name="deliveries")
    alarm = models.ForeignKey(Alarm, on_delete=models.CASCADE, related_name="deliveries")
    transition = models.ForeignKey(AlarmTransition, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16, choices=NotificationEvent.choices)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # A task sends the delivery only while it holds the claim (see notifications.attempt_delivery).
    claimed_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="End of the lease of the task that is sending this delivery; empty when unclaimed.",
    )
    claim_token = models.UUIDField(
        null=True, blank=True, editable=False, help_text="Token of the task that holds the claim; empty when unclaimed."
    )
    # The re-queue sweep queues a retrying delivery again once this is REQUEUE_GRACE_SECONDS past, because its
    # Celery retry was then lost.
    next_attempt_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Time the Celery retry of a retrying delivery is due; empty unless the delivery is retrying.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "notification deliveries"
        constraints = [
            models.UniqueConstraint(fields=["target", "transition"], name="alarms_delivery_one_per_target_transition"),
            models.UniqueConstraint(
                fields=["target", "alarm"],
                condition=Q(event=NotificationEvent.ESCALATED),
                name="alarms_delivery_one_escalation_per_target",
            ),
        ]

    def __str__(self):
        return f"{self.get_event_display()} of alarm {self.alarm_id} to {self.target_id}: {self.status}"
