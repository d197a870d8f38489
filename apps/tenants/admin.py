"""Platform admin on the public domain: tenants and their domains."""

import logging

from django import forms
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.core.exceptions import ValidationError
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django_tenants.admin import TenantAdminMixin
from django_tenants.utils import schema_exists

from apps.audit.services import record_tenant_lifecycle

from .backup_admin import TenantBackupAdminMixin, TenantExportAdmin, TenantLifecycleEventAdmin
from .models import Domain, Tenant, TenantExport, TenantLifecycleEvent
from .services import TENANT_SETTING_FIELDS, update_tenant_settings
from .validators import validate_new_schema_name

logger = logging.getLogger(__name__)


class PlatformAdminSite(AdminSite):
    site_header = "ThermaCore platform"
    site_title = "ThermaCore platform"


platform_admin_site = PlatformAdminSite(name="platform_admin")


class DomainInlineFormSet(BaseInlineFormSet):
    """Domain rows of an existing tenant, which must keep at least one domain and a primary one to stay reachable."""

    def clean(self):
        super().clean()
        if self.instance.pk is None or any(self.errors):
            return
        remaining = [
            form.cleaned_data for form in self.forms
            if form.cleaned_data and form.cleaned_data.get("domain") and not form.cleaned_data.get("DELETE")
        ]
        if not remaining:
            raise ValidationError(
                f"Tenant {self.instance.schema_name!r} needs at least one domain; add another domain before "
                "deleting the last one, or delete the tenant."
            )
        if not any(domain.get("is_primary") for domain in remaining):
            raise ValidationError(
                f"Tenant {self.instance.schema_name!r} needs a primary domain; mark one of "
                f"{', '.join(sorted(domain['domain'] for domain in remaining))} as primary."
            )


class DomainInline(admin.TabularInline):
    model = Domain
    formset = DomainInlineFormSet
    extra = 0


class TenantAdminForm(forms.ModelForm):
    """The tenant form; on creation, the schema name must be free in the database, not only among tenants."""

    class Meta:
        model = Tenant
        fields = "__all__"

    def clean_schema_name(self):
        schema_name = self.cleaned_data["schema_name"]
        validate_new_schema_name(schema_name)
        # django-tenants would adopt an existing schema of that name, and drop it with the tenant.
        if schema_exists(schema_name):
            raise ValidationError(
                f"Schema {schema_name!r} already exists in the database; choose another schema name."
            )
        return schema_name


@admin.register(Tenant, site=platform_admin_site)
class TenantAdmin(TenantBackupAdminMixin, TenantAdminMixin, admin.ModelAdmin):
    form = TenantAdminForm
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

    def get_readonly_fields(self, request, obj=None):
        # Changing the schema name would point the tenant at another schema, or at none, without moving its data.
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "schema_name") if obj is not None else fields

    def save_model(self, request, obj, form, change):
        """Save through the services that record the change in the tenant's own audit trail."""
        if not change:
            with transaction.atomic():
                super().save_model(request, obj, form, change)
                record_tenant_lifecycle(obj, "provisioned", actor=request.user, detail={"via": "platform admin"})
            return
        changes = {name: form.cleaned_data[name] for name in form.changed_data if name in TENANT_SETTING_FIELDS}
        if changes:
            update_tenant_settings(obj, changes, actor=request.user)

    def save_related(self, request, form, formsets, change):
        """Save the domains and record a changed domain list in the tenant's audit trail."""
        tenant = form.instance
        before = sorted(tenant.domains.values_list("domain", flat=True)) if change else None
        super().save_related(request, form, formsets, change)
        if not change:
            return
        after = sorted(tenant.domains.values_list("domain", flat=True))
        if after != before:
            record_tenant_lifecycle(
                tenant, "settings_changed", actor=request.user, detail={"changes": {"domains": [before, after]}}
            )
            logger.info("Changed domains of tenant schema=%s to %s by platform user %s",
                        tenant.schema_name, ",".join(after), request.user.pk)


platform_admin_site.register(TenantExport, TenantExportAdmin)
platform_admin_site.register(TenantLifecycleEvent, TenantLifecycleEventAdmin)
