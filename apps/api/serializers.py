from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from apps.protocols.models import Device, Point
from apps.sensors.models import Sensor
from apps.units.models import Site, Unit


class ModelCleanMixin:
    """Run the model's own clean() so the API rejects what the admin rejects, with the same messages."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.Meta.model(**{**self._current_values(), **attrs})
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(serializers.as_serializer_error(exc)) from exc
        return attrs

    def _current_values(self):
        if self.instance is None:
            return {}
        return {
            field.name: getattr(self.instance, field.name)
            for field in self.Meta.model._meta.concrete_fields
            if not field.primary_key
        }


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ("id", "name", "address", "time_zone", "latitude", "longitude")


class UnitSerializer(serializers.ModelSerializer):
    class Meta:
        model = Unit
        fields = (
            "id", "site", "name", "kind", "manufacturer", "model", "serial_number", "status",
            "commissioned_on", "location",
        )


class SensorSerializer(ModelCleanMixin, serializers.ModelSerializer):
    class Meta:
        model = Sensor
        fields = ("id", "unit", "name", "key", "quantity", "engineering_unit", "minimum", "maximum", "decimals")


class DeviceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Device
        fields = (
            "id", "name", "protocol", "host", "port", "unit_id", "poll_interval", "timeout", "enabled",
            "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count",
        )
        read_only_fields = (
            "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count",
        )


class PointSerializer(ModelCleanMixin, serializers.ModelSerializer):
    class Meta:
        model = Point
        fields = (
            "id", "device", "sensor", "register_type", "address", "data_type", "byte_order", "bit", "scale",
            "offset", "enabled",
        )


class ReadingSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    value = serializers.FloatField(allow_null=True)
    quality = serializers.IntegerField(help_text="0-63 good, 64-127 uncertain, 128 and above bad.")
