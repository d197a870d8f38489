"""Platform admin pages for tenant exports and deletion; apps.tenants.admin registers them."""

import logging

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .backup import DeletionRejected, delete_tenant, deletion_blockers, latest_export
from .backup_models import ExportStatus, TenantExport
from .jobs import ProvisioningConflict, request_export

logger = logging.getLogger(__name__)


def progress_bar(export):
    return format_html('<progress value="{}" max="100"></progress> {}%', export.progress_percent, export.progress_percent)


class TenantBackupAdminMixin:
    """Adds "Export now" and "Delete tenant" pages to the tenant admin, and a summary of the latest export."""

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/export/", self.admin_site.admin_view(self.export_view), name=f"{prefix}_export"),
            path(
                "<path:object_id>/delete-tenant/", self.admin_site.admin_view(self.delete_tenant_view),
                name=f"{prefix}_delete_tenant",
            ),
            *super().get_urls(),
        ]

    def has_delete_permission(self, request, obj=None):
        # The standard delete would drop the schema without the export check; delete_tenant_view replaces it.
        return False

    @admin.display(description="Export and deletion")
    def backup_summary(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        prefix = f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}"
        export = obj.exports.order_by("-created_at").first()
        state = "no export yet" if export is None else f"latest export: {export.status}, {export.progress_percent}%"
        return format_html(
            '{} &middot; <a href="{}">Export now</a> &middot; <a href="{}">Exports</a> &middot; '
            '<a class="deletelink" href="{}">Delete tenant</a>',
            state,
            reverse(f"{prefix}_export", args=[obj.pk]),
            reverse(f"{self.admin_site.name}:tenants_tenantexport_changelist") + f"?tenant__id__exact={obj.pk}",
            reverse(f"{prefix}_delete_tenant", args=[obj.pk]),
        )

    def _tenant_or_404(self, request, object_id):
        if not request.user.is_superuser:
            raise PermissionDenied
        tenant = self.get_object(request, object_id)
        if tenant is None:
            raise Http404(f"No tenant with id {object_id!r}.")
        return tenant

    def export_view(self, request, object_id):
        tenant = self._tenant_or_404(request, object_id)
        if request.method == "POST":
            # The same path as the platform API, so the request is recorded in the tenant's audit trail.
            try:
                export = request_export(tenant, actor=request.user)
            except ProvisioningConflict as exc:
                messages.error(request, str(exc))
                return HttpResponseRedirect(request.path)
            logger.info("Platform user %s requested export %s of tenant schema=%s", request.user.pk, export.pk, tenant.schema_name)
            messages.success(request, f"Export of {tenant.schema_name} queued; its progress is shown below.")
            return HttpResponseRedirect(
                reverse(f"{self.admin_site.name}:tenants_tenantexport_changelist") + f"?tenant__id__exact={tenant.pk}"
            )
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "tenant": tenant,
            "title": f"Export tenant {tenant.name}",
            "running": tenant.exports.filter(status__in=[ExportStatus.PENDING, ExportStatus.RUNNING]).first(),
        }
        return TemplateResponse(request, "admin/tenants/tenant_export.html", context)

    def delete_tenant_view(self, request, object_id):
        tenant = self._tenant_or_404(request, object_id)
        error = None
        if request.method == "POST":
            skip_export = request.POST.get("skip_export") == "on"
            try:
                delete_tenant(
                    tenant, actor=request.user, confirm=request.POST.get("confirm", "").strip(), skip_export=skip_export
                )
            except DeletionRejected as exc:
                error = str(exc)
            else:
                messages.success(request, f"Tenant {tenant.schema_name} was deleted; its schema is dropped.")
                return HttpResponseRedirect(reverse(f"{self.admin_site.name}:tenants_tenant_changelist"))
        export = latest_export(tenant)
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "tenant": tenant,
            "title": f"Delete tenant {tenant.name}", "export": export,
            "blockers": deletion_blockers(tenant, export), "error": error,
        }
        return TemplateResponse(request, "admin/tenants/tenant_delete.html", context)


class TenantExportAdmin(admin.ModelAdmin):
    list_display = (
        "schema_name", "tenant_name", "status", "progress", "current_table", "rows_written", "file_path", "checksum",
        "requested_by", "created_at", "finished_at",
    )
    list_filter = ("status", "tenant")
    search_fields = ("schema_name", "tenant_name", "checksum")
    readonly_fields = [field.name for field in TenantExport._meta.fields] + ["progress"]

    @admin.display(description="Progress")
    def progress(self, obj):
        return progress_bar(obj)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # A later deletion of the tenant relies on this record and its snapshot.
        return False


class TenantLifecycleEventAdmin(admin.ModelAdmin):
    list_display = ("time", "event", "schema_name", "tenant_name", "actor")
    list_filter = ("event",)
    search_fields = ("schema_name", "tenant_name", "actor")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
