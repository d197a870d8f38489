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
