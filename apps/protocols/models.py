from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from apps.sensors.models import Sensor

from .choices import ByteOrder, DataType, DeviceStatus, Protocol, RegisterType
from .modbus.codec import register_count

BIT_REGISTER_TYPES = {RegisterType.COIL, RegisterType.DISCRETE}


class DeviceQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def due(self, now=None):
        return self.enabled().filter(next_poll_at__lte=now or timezone.now())


class Device(models.Model):
    """A field device that the portal polls, such as a boiler controller answering Modbus TCP."""

    name = models.CharField(max_length=200, unique=True)
    protocol = models.CharField(max_length=32, choices=Protocol.choices, default=Protocol.MODBUS_TCP)
    host = models.CharField(max_length=253, help_text="IP address or host name of the device or gateway.")
    port = models.PositiveIntegerField(default=502, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    unit_id = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(0), MaxValueValidator(255)],
        help_text="Modbus unit (slave) id; 0 and 255 address a TCP device directly.",
    )
    poll_interval = models.FloatField(
        default=5.0,
        validators=[MinValueValidator(0.5), MaxValueValidator(86400)],
        help_text="Seconds between polls.",
    )
    timeout = models.FloatField(
        default=3.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(60)],
        help_text="Seconds to wait for a response.",
    )
    enabled = models.BooleanField(default=True)

    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN, editable=False)
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_poll_duration_ms = models.FloatField(null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    error_count = models.PositiveBigIntegerField(default=0, editable=False)
    next_poll_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Point(models.Model):
    """A register or bit of a device that delivers the values of one sensor."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="points")
    sensor = models.ForeignKey(Sensor, on_delete=models.CASCADE, related_name="points")
    register_type = models.CharField(max_length=16, choices=RegisterType.choices, default=RegisterType.HOLDING)
    address = models.PositiveIntegerField(
        validators=[MaxValueValidator(65535)], help_text="0-based register or coil address."
    )
    data_type = models.CharField(max_length=16, choices=DataType.choices, default=DataType.UINT16)
    byte_order = models.CharField(max_length=4, choices=ByteOrder.choices, default=ByteOrder.ABCD)
    bit = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(15)], help_text="Bit index 0-15, for data type 'bit'."
    )
    scale = models.FloatField(default=1.0, help_text="Engineering value = raw value × scale + offset.")
    offset = models.FloatField(default=0.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["device", "register_type", "address"]
        constraints = [
            models.UniqueConstraint(fields=["device", "sensor"], name="protocols_point_unique_sensor_per_device"),
        ]

    def __str__(self):
        return f"{self.device.name} {self.register_type} {self.address} → {self.sensor_id}"

    @property
    def register_count(self):
        if self.register_type in BIT_REGISTER_TYPES:
            return 1
        return register_count(self.data_type)

    def clean(self):
        errors = {}
        is_bit_table = self.register_type in BIT_REGISTER_TYPES
        if is_bit_table and self.data_type != DataType.BOOL:
            errors["data_type"] = (
                f"Data type {self.data_type!r} does not fit a {self.register_type}; use 'bool' for coils "
                "and discrete inputs."
            )
        if not is_bit_table and self.data_type == DataType.BOOL:
            errors["data_type"] = "Data type 'bool' is for coils and discrete inputs; use 'bit' for a register bit."
        if self.data_type == DataType.BIT and self.bit is None:
            errors["bit"] = "Data type 'bit' needs a bit index from 0 to 15."
        if self.data_type != DataType.BIT and self.bit is not None:
            errors["bit"] = f"A bit index only applies to data type 'bit', not {self.data_type!r}; clear it."
        if self.scale == 0:
            errors["scale"] = "Scale 0 would turn every value into the offset; use 1 for no scaling."
        if self.address is not None and not errors and self.address + self.register_count > 65536:
            errors["address"] = (
                f"Address {self.address} with {self.register_count} registers runs past the last register 65535."
            )
        if errors:
            raise ValidationError(errors)

    def to_engineering(self, raw):
        if isinstance(raw, bool):
            return float(raw)
        return raw * self.scale + self.offset
