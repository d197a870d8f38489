from django.contrib import admin

from apps.audit.mixins import AuditedModelAdminMixin

from .models import Sensor


@admin.register(Sensor)
class SensorAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "key", "unit", "quantity", "engineering_unit", "minimum", "maximum")
    list_filter = ("quantity", "unit__site", "unit")
    search_fields = ("name", "key", "unit__name")
    list_select_related = ("unit", "unit__site")
