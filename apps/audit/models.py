from django.conf import settings
from django.db import models

from .choices import ActorType, AuditAction, CredentialType, ExportStatus, Outcome


class AuditEntryQuerySet(models.QuerySet):
    def in_chain_order(self):
        return self.order_by("sequence")


class AuditEntry(models.Model):
    """One recorded event of a tenant, e.g. "operator anna changed Boiler 2's status from 192.0.2.7".

    Entries form a hash chain per tenant schema: `hash` covers the entry's
    content and `previous_hash`, which is the hash of the entry with the
    sequence before it. A database trigger rejects UPDATE and DELETE, so
    entries are only ever appended (see apps.audit.services.record).
    Actors and objects are stored by id and name, not by foreign key, so
    deleting a user or a unit never touches its history.
    """

    sequence = models.PositiveBigIntegerField(help_text="Position in the tenant's chain, from 1 without gaps.")
    time = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, help_text="User id, API key id, job or agent name.")
    actor_name = models.CharField(max_length=150, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    action = models.CharField(max_length=64, choices=AuditAction.choices)
    object_type = models.CharField(max_length=100, blank=True, help_text='"app_label.model", e.g. "units.unit".')
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    changes = models.JSONField(
        default=dict, blank=True, help_text='Changed fields as {"field": [before, after]}; null for "absent".'
    )
    detail = models.JSONField(default=dict, blank=True, help_text="Further facts, e.g. the filters of an export.")
    previous_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        verbose_name_plural = "audit entries"
        constraints = [
            models.UniqueConstraint(fields=["sequence"], name="audit_entry_unique_sequence"),
            models.CheckConstraint(condition=models.Q(sequence__gte=1), name="audit_entry_sequence_positive"),
        ]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_entry_object_idx"),
            models.Index(fields=["actor_type", "actor_id"], name="audit_entry_actor_idx"),
            models.Index(fields=["action", "time"], name="audit_entry_action_time_idx"),
        ]

    def __str__(self):
        return f"#{self.sequence} {self.action} {self.object_type}:{self.object_id} by {self.actor_name or self.actor_type}"


def _default_working_days():
    return [0, 1, 2, 3, 4]


class AuditSettings(models.Model):
    """Security monitoring and retention settings of one tenant; the schema contains at most one row.

    Read it with `AuditSettings.current()`, which falls back to the defaults
    when the tenant never saved any.
    """

    singleton = models.BooleanField(default=True, editable=False)
    failed_login_limit = models.PositiveIntegerField(
        default=10, help_text="Failed logins for one user name or from one address that raise a security alarm."
    )
    failed_login_window_minutes = models.PositiveIntegerField(
        default=5, help_text="Minutes in which failed_login_limit failures must fall."
    )
    denial_limit = models.PositiveIntegerField(
        default=5, help_text="Permission denials of one user that raise a security alarm."
    )
    denial_window_minutes = models.PositiveIntegerField(
        default=10, help_text="Minutes in which denial_limit denials must fall."
    )
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text='IANA time zone of the working hours, e.g. "Europe/Berlin".'
    )
    working_days = models.JSONField(
        default=_default_working_days, help_text="Weekdays with working hours, 0 = Monday to 6 = Sunday."
    )
    working_hours_start = models.TimeField(
        null=True, blank=True,
        help_text="Start of the working hours (inclusive); empty turns the check of setpoint writes off.",
    )
    working_hours_end = models.TimeField(null=True, blank=True, help_text="End of the working hours (exclusive).")
    retention_days = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Entries older than this many days are archived and dropped; empty keeps entries forever.",
    )

    class Meta:
        verbose_name_plural = "audit settings"
        constraints = [
            models.UniqueConstraint(fields=["singleton"], name="audit_settings_single_row"),
            models.CheckConstraint(condition=models.Q(singleton=True), name="audit_settings_singleton_true"),
            models.CheckConstraint(
                condition=models.Q(working_hours_start__isnull=True, working_hours_end__isnull=True)
                | models.Q(working_hours_start__lt=models.F("working_hours_end")),
                name="audit_settings_working_hours_ordered",
            ),
            models.CheckConstraint(condition=models.Q(retention_days__gte=1), name="audit_settings_retention_positive"),
        ]

    def __str__(self):
        return "Audit settings"

    @classmethod
    def current(cls):
        return cls.objects.first() or cls()

    def clean(self):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from django.core.exceptions import ValidationError

        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(
                {"time_zone": f"{self.time_zone!r} is not a known IANA time zone; use e.g. Europe/Berlin or UTC."}
            ) from None
        if (self.working_hours_start is None) != (self.working_hours_end is None):
            raise ValidationError("Give both the start and the end of the working hours, or neither.")
        if self.working_hours_start is not None and self.working_hours_start >= self.working_hours_end:
            raise ValidationError(
                f"Working hours start {self.working_hours_start} must be before their end {self.working_hours_end}."
            )
        days = self.working_days
        if not isinstance(days, list) or any(not isinstance(day, int) or not 0 <= day <= 6 for day in days):
            raise ValidationError(
                {"working_days": f"{days!r} is invalid; give a list of weekdays from 0 (Monday) to 6 (Sunday)."}
            )


class CredentialNetwork(models.Model):
    """A network (IPv4 /24, IPv6 /64) a credential was used from; a new one raises a security alarm."""

    credential_type = models.CharField(max_length=16, choices=CredentialType.choices)
    credential_id = models.CharField(max_length=64, help_text="User id for JWTs, key prefix for API keys.")
    network = models.CharField(max_length=64)
    first_seen = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["credential_type", "credential_id", "network"], name="audit_credential_network_unique"
            ),
        ]

    def __str__(self):
        return f"{self.credential_type}:{self.credential_id} from {self.network}"


class ExportJob(models.Model):
    """An export written to a file by a Celery task, with its manifest beside it, for exports too large to wait for.

    The entries are fixed when the job is requested: those matching `filters`
    up to sequence `through`. Only the user who requested a job can see it and
    download its file, which is deleted AUDIT_EXPORT_RETENTION_DAYS after it
    was written.
    """

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    format = models.CharField(max_length=8)
    filters = models.JSONField(default=dict, blank=True, help_text='Filter parameters as {"name": [values]}.')
    through = models.PositiveBigIntegerField()
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    entries_total = models.PositiveBigIntegerField(default=0)
    entries_written = models.PositiveBigIntegerField(default=0)
    file_name = models.CharField(max_length=200, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    file_deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="When the retention task deleted the file and its manifest."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(entries_written__lte=models.F("entries_total")),
                name="audit_export_job_progress_bounded",
            ),
        ]

    def __str__(self):
        return f"Export {self.pk} ({self.format}, through entry {self.through}): {self.status}"

    @property
    def percent(self):
        if self.status == ExportStatus.DONE:
            return 100
        return int(100 * self.entries_written / self.entries_total) if self.entries_total else 0

    @property
    def manifest_name(self):
        return f"{self.file_name}.manifest.json" if self.file_name else ""
