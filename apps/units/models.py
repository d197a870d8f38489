from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.tenants.validators import validate_time_zone

from .choices import UnitKind, UnitStatus


class Site(models.Model):
    """A plant location, such as a hospital energy centre or a district heating station."""

    name = models.CharField(max_length=200, unique=True)
    address = models.CharField(max_length=300, blank=True)
    time_zone = models.CharField(
        max_length=64, default="UTC", validators=[validate_time_zone], help_text="IANA time zone name of the site."
    )
    latitude = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(-90), MaxValueValidator(90)]
    )
    longitude = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(-180), MaxValueValidator(180)]
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class UnitQuerySet(models.QuerySet):
    def in_service(self):
        return self.filter(status=UnitStatus.IN_SERVICE)


class Unit(models.Model):
    """A piece of thermal plant at a site, e.g. "Boiler 2" or "Chiller A", with its sensors."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="units")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=UnitKind.choices)
    manufacturer = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)
    serial_number = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=32, choices=UnitStatus.choices, default=UnitStatus.IN_SERVICE)
    commissioned_on = models.DateField(null=True, blank=True)
    location = models.CharField(max_length=200, blank=True, help_text="Room, floor or position on site.")

    objects = UnitQuerySet.as_manager()

    class Meta:
        ordering = ["site__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["site", "name"], name="units_unit_unique_name_per_site"),
        ]

    def __str__(self):
        return f"{self.site.name} / {self.name}"
