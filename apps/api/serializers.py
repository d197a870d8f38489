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


class DeviceSerializer(ModelCleanMixin, serializers.ModelSerializer):
    class Meta:
        model = Device
        fields = (
            "id", "name", "protocol", "host", "port", "unit_id", "endpoint_path", "poll_interval", "timeout",
            "enabled", "username", "password", "client_id", "qos", "tls_ca_file", "tls_cert_file", "tls_key_file",
            "tls_verify_hostname", "dnp3_master_address", "dnp3_outstation_address", "integrity_interval", "event_poll_interval", "time_sync",
            "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count",
        )
        read_only_fields = (
            "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count",
        )
        extra_kwargs = {"password": {"write_only": True}}


class PointSerializer(ModelCleanMixin, serializers.ModelSerializer):
    class Meta:
        model = Point
        fields = (
            "id", "device", "sensor", "register_type", "address", "data_type", "byte_order", "bit", "scale",
            "offset", "scale_factor_address", "topic", "json_path", "timestamp_path", "node_id",
            "sampling_interval_ms", "deadband", "dnp3_type", "dnp3_index", "dnp3_control", "dnp3_operate_mode",
            "dnp3_on_time_ms", "dnp3_off_time_ms", "enabled", "last_error",
        )
        read_only_fields = ("last_error",)


class DeviceProfileImportSerializer(serializers.Serializer):
    unit = serializers.PrimaryKeyRelatedField(queryset=Unit.objects.all(), help_text="Unit that gets the sensors.")
    profile = serializers.CharField(help_text="Profile document in YAML or JSON.", trim_whitespace=False)


class SetpointSerializer(serializers.Serializer):
    value = serializers.FloatField(help_text="Setpoint in the sensor's engineering unit; 0 or 1 for bits and coils.")
    written = serializers.FloatField(read_only=True, help_text="The value after encoding in the point's data type.")
    read_back = serializers.FloatField(read_only=True, help_text="The value the device returned after the write.")

    def to_representation(self, instance):
        return {"value": instance.requested, "written": instance.written, "read_back": instance.read_back}


class ReadingSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    value = serializers.FloatField(allow_null=True)
    quality = serializers.IntegerField(help_text="0-63 good, 64-127 uncertain, 128 and above bad.")
