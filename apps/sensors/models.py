from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.tenants.quotas import QuotaCheckedQuerySet
from apps.units.models import Unit

from .choices import Quantity


class Sensor(models.Model):
    """A measured quantity of a unit, such as the supply temperature of a boiler, in engineering units."""

    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="sensors")
    name = models.CharField(max_length=200)
    key = models.SlugField(max_length=64, help_text="Short identifier, unique within the unit, e.g. 'supply_temp'.")
    quantity = models.CharField(max_length=32, choices=Quantity.choices)
    engineering_unit = models.CharField(max_length=32, blank=True, help_text="Unit symbol, e.g. '°C' or 'kW'.")
    minimum = models.FloatField(null=True, blank=True, help_text="Lowest physically possible value.")
    maximum = models.FloatField(null=True, blank=True, help_text="Highest physically possible value.")
    decimals = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(0), MaxValueValidator(9)])

    # bulk_create() checks the max_sensors quota, which save() checks through pre_save.
    objects = QuotaCheckedQuerySet.as_manager()

    class Meta:
        ordering = ["unit", "name"]
        constraints = [
            models.UniqueConstraint(fields=["unit", "key"], name="sensors_sensor_unique_key_per_unit"),
            models.CheckConstraint(
                condition=models.Q(minimum__isnull=True)
                | models.Q(maximum__isnull=True)
                | models.Q(minimum__lt=models.F("maximum")),
                name="sensors_sensor_minimum_below_maximum",
            ),
        ]

    def __str__(self):
        return f"{self.unit.name} / {self.name}"

    def clean(self):
        if self.minimum is not None and self.maximum is not None and self.minimum >= self.maximum:
            raise ValidationError(
                {"maximum": f"Maximum {self.maximum} must be greater than minimum {self.minimum}."}
            )

    def in_range(self, value):
        """Return whether a finite value lies inside the sensor's physical range."""
        if self.minimum is not None and value < self.minimum:
            return False
        if self.maximum is not None and value > self.maximum:
            return False
        return True
