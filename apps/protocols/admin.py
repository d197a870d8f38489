from django.contrib import admin, messages
from django.http import HttpResponse

from apps.audit.mixins import AuditedModelAdminMixin

from .models import Device, Point
from .profiles import export_profile


class PointInline(admin.StackedInline):
    model = Point
    extra = 0
    fieldsets = (
        (None, {"fields": (("sensor", "enabled"), ("scale", "offset"), "last_error")}),
        ("Modbus", {"fields": (("register_type", "address"), ("data_type", "byte_order", "bit"),
                               "scale_factor_address")}),
        ("MQTT", {"fields": ("topic", ("json_path", "timestamp_path"))}),
        ("OPC UA", {"fields": ("node_id", ("sampling_interval_ms", "deadband"))}),
        ("DNP3", {"fields": (("dnp3_type", "dnp3_index"),)}),
    )
    readonly_fields = ("last_error",)
    autocomplete_fields = ("sensor",)


@admin.register(Device)
class DeviceAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "unit_id", "poll_interval", "enabled", "status", "last_seen")
    list_filter = ("protocol", "enabled", "status")
    search_fields = ("name", "host")
    fieldsets = (
        (None, {"fields": ("name", "protocol", "enabled", ("host", "port"), "timeout")}),
        ("Modbus", {"fields": ("unit_id", "poll_interval")}),
        ("MQTT and OPC UA", {"fields": ("endpoint_path", ("username", "password"), "client_id", "qos",
                                        "tls_ca_file", ("tls_cert_file", "tls_key_file"))}),
        ("DNP3", {"fields": (("dnp3_master_address", "dnp3_outstation_address"),
                             ("integrity_interval", "event_poll_interval"), "time_sync")}),
        ("Status", {"fields": ("status", "last_seen", "last_error", "last_poll_duration_ms",
                               "consecutive_failures", "error_count", "next_poll_at")}),
    )
    readonly_fields = (
        "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count", "next_poll_at",
    )
    inlines = [PointInline]
    actions = ["download_profile"]

    @admin.action(description="Download the device profile (YAML) of one device")
    def download_profile(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one device to download its profile.", messages.ERROR)
            return None
        device = queryset.get()
        response = HttpResponse(export_profile(device), content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="device-{device.pk}-profile.yaml"'
        return response
