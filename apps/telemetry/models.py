from django.conf import settings
from django.db import models

from apps.sensors.models import Sensor
from apps.sensors.quality import Quality


class Reading(models.Model):
    """A stored sensor value at one instant; one row per sensor and timestamp.

    The table is range-partitioned by time (or a TimescaleDB hypertable), so
    it is created by SQL in the migration and not managed by Django.
    """

    pk = models.CompositePrimaryKey("sensor_id", "time")
    sensor = models.ForeignKey(Sensor, on_delete=models.DO_NOTHING, related_name="+")
    time = models.DateTimeField()
    value = models.FloatField(null=True)
    quality = models.SmallIntegerField(choices=Quality.choices, default=Quality.GOOD)

    class Meta:
        managed = False
        db_table = "telemetry_reading"
        ordering = ["sensor", "time"]

    def __str__(self):
        return f"sensor {self.sensor_id} at {self.time.isoformat()}: {self.value}"


class CsvImportStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Importing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


# Fields of a job that store the ImportReport counts of apps.telemetry.csv_import, saved after each chunk.
REPORT_FIELDS = (
    "layout", "lines", "chunks", "accepted", "spooled", "duplicates", "rejected", "rejections", "unlisted_rejections",
)


class CsvImportJob(models.Model):
    """A CSV import of historical readings run by a Celery task, with its progress and report.

    The upload is stored under TELEMETRY_CSV_IMPORT_DIR/<schema>/ until the job
    ends. The counts are those of ``ImportReport`` and are saved after every
    chunk, so a failed job still shows what was stored before it stopped.
    The API returns a job only to the user who requested it.
    """

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=255, help_text="Name of the uploaded file, or 'request body'.")
    upload_path = models.CharField(max_length=500, help_text="Stored upload; deleted when the job ends.")
    upload_size = models.PositiveBigIntegerField(default=0, help_text="Size of the upload in bytes.")
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=CsvImportStatus.choices, default=CsvImportStatus.PENDING)
    layout = models.CharField(max_length=8, blank=True)
    lines = models.PositiveBigIntegerField(default=0, help_text="Data lines read so far, without the header.")
    chunks = models.PositiveIntegerField(default=0)
    accepted = models.PositiveBigIntegerField(default=0)
    spooled = models.PositiveBigIntegerField(default=0)
    duplicates = models.PositiveBigIntegerField(default=0)
    rejected = models.PositiveBigIntegerField(default=0)
    rejections = models.JSONField(
        default=list, blank=True, help_text='The first rejected readings as [{"line", "sensor", "reason"}].'
    )
    unlisted_rejections = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "CSV import job"

    def __str__(self):
        return f"CSV import {self.pk} of {self.source}: {self.status}"

    def report(self):
        """Return the counts in the form of ``ImportReport.as_dict()``, so far or final."""
        return {**{name: getattr(self, name) for name in REPORT_FIELDS}, "error": self.error, "dry_run": self.dry_run}
