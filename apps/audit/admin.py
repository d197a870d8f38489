from django.contrib import admin

from .models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only list of the audit trail; entries are written by apps.audit.services.record alone."""

    list_display = ("sequence", "time", "action", "outcome", "actor_type", "actor_name", "object_type", "object_id",
                    "source_ip")
    list_filter = ("action", "outcome", "actor_type", "object_type")
    search_fields = ("actor_name", "object_repr", "object_id", "request_id")
    date_hierarchy = "time"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
