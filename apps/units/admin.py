from django.contrib import admin

from apps.audit.mixins import AuditedModelAdminMixin

from .models import Site, Unit


class UnitInline(admin.TabularInline):
    model = Unit
    extra = 0
    fields = ("name", "kind", "status", "serial_number")
    show_change_link = True


@admin.register(Site)
class SiteAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "address", "time_zone")
    search_fields = ("name", "address")
    inlines = [UnitInline]


@admin.register(Unit)
class UnitAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "site", "kind", "status", "serial_number", "commissioned_on")
    list_filter = ("site", "kind", "status")
    search_fields = ("name", "serial_number", "model", "manufacturer")
    list_select_related = ("site",)
