"""Platform admin on the public domain: tenants and their domains."""

from django.contrib import admin
from django.contrib.admin import AdminSite
from django_tenants.admin import TenantAdminMixin

from .backup_admin import TenantBackupAdminMixin, TenantExportAdmin, TenantLifecycleEventAdmin
from .models import Domain, Tenant, TenantExport, TenantLifecycleEvent


class PlatformAdminSite(AdminSite):
    site_header = "ThermaCore platform"
    site_title = "ThermaCore platform"


platform_admin_site = PlatformAdminSite(name="platform_admin")


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


@admin.register(Tenant, site=platform_admin_site)
class TenantAdmin(TenantBackupAdminMixin, TenantAdminMixin, admin.ModelAdmin):
    list_display = ("name", "schema_name", "created_at")
    search_fields = ("name", "schema_name")
    inlines = [DomainInline]
    readonly_fields = ("status", "suspended_at", "suspension_reason", "created_at", "backup_summary")
    fieldsets = (
        (None, {"fields": ("name", "schema_name", "time_zone", "status", "suspended_at", "suspension_reason", "created_at")}),
        ("Export and deletion", {"fields": ("backup_summary",)}),
        ("Quotas", {"fields": ("max_devices", "max_sensors", "max_users", "api_rate_limit", "retention_days")}),
        ("Security policy", {"fields": ("password_min_length", "session_timeout_minutes", "api_allowed_networks")}),
    )
    # A bulk delete from the list would skip each tenant's schema drop.
    actions = None


platform_admin_site.register(TenantExport, TenantExportAdmin)
platform_admin_site.register(TenantLifecycleEvent, TenantLifecycleEventAdmin)
