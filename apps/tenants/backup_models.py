"""Public-schema records of tenant exports and of lifecycle events that outlive the tenant (apps.tenants.backup)."""

from django.db import models


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Exporting"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class TenantExport(models.Model):
    """One export of a whole tenant schema to an archive file, with its progress for the platform admin.

    The record stays when the tenant is deleted, because the archive is then
    the tenant's only copy; `schema_name` and `tenant_name` keep naming it.
    """

    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.SET_NULL, related_name="exports")
    schema_name = models.CharField(max_length=63)
    tenant_name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    progress_percent = models.PositiveSmallIntegerField(default=0)
    current_table = models.CharField(max_length=200, blank=True)
    rows_written = models.PositiveBigIntegerField(default=0)
    file_path = models.CharField(max_length=1000, blank=True)
    file_size = models.PositiveBigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the archive file, in hex.")
    # The PostgreSQL snapshot the export read and its row counts, so a later
    # delete can tell whether the schema changed since (backup.changes_since_export).
    snapshot = models.CharField(max_length=2000, blank=True)
    row_counts = models.JSONField(default=dict, blank=True)
    requested_by = models.CharField(max_length=150, blank=True, help_text="User name of the platform user, or the job.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Times the task was sent to the broker and the latest of them (apps.tenants.recovery re-sends lost ones).
    queue_attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(progress_percent__lte=100), name="tenants_export_percent_max_100"),
        ]

    def __str__(self):
        return f"Export of {self.schema_name} at {self.created_at:%Y-%m-%d %H:%M} ({self.status})"


class TenantLifecycleEvent(models.Model):
    """A tenant lifecycle event kept in the public schema, e.g. a deletion, which the tenant's own chain cannot record."""

    time = models.DateTimeField(auto_now_add=True)
    schema_name = models.CharField(max_length=63)
    tenant_name = models.CharField(max_length=200)
    event = models.CharField(max_length=32, help_text='"exported", "restored" or "deleted".')
    actor = models.CharField(max_length=150, help_text='"platform:<user name>" or the job name.')
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-time"]

    def __str__(self):
        return f"{self.event} {self.schema_name} by {self.actor} at {self.time:%Y-%m-%d %H:%M}"
