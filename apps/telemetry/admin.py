from django.contrib import admin

from .models import CsvImportJob


@admin.register(CsvImportJob)
class CsvImportJobAdmin(admin.ModelAdmin):
    """Read-only list of the tenant's CSV import jobs; jobs are created through the API and run by Celery."""

    list_display = ("id", "source", "requested_by", "status", "dry_run", "lines", "accepted", "duplicates",
                    "rejected", "created_at", "finished_at")
    list_filter = ("status", "dry_run")
    search_fields = ("source", "requested_by__username")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
