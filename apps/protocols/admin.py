from django.contrib import admin

from .models import Device, Point


class PointInline(admin.TabularInline):
    model = Point
    extra = 0
    fields = ("sensor", "register_type", "address", "data_type", "byte_order", "bit", "scale", "offset", "enabled")
    autocomplete_fields = ("sensor",)


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "unit_id", "poll_interval", "enabled", "status", "last_seen")
    list_filter = ("protocol", "enabled", "status")
    search_fields = ("name", "host")
    readonly_fields = (
        "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count", "next_poll_at",
    )
    inlines = [PointInline]
