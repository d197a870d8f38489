import logging

from django.contrib import admin, messages

from .models import Alarm, AlarmRule, AlarmTransition
from .services import AlarmActionError, acknowledge_alarm

logger = logging.getLogger(__name__)


@admin.register(AlarmRule)
class AlarmRuleAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "condition",
        "limit",
        "deadband",
        "on_delay",
        "off_delay",
        "priority",
        "enabled",
        "in_service",
    )
    list_filter = ("condition", "priority", "enabled", "in_service", "sensor__unit")
    search_fields = ("sensor__name", "sensor__key", "message", "rationale")
    list_select_related = ("sensor__unit__site",)
    autocomplete_fields = ("sensor",)
    # In-service changes go through the services so the open alarm follows.
    readonly_fields = ("in_service", "created_at")
    fieldsets = (
        (None, {"fields": ("sensor", "condition", "priority", "message", "rationale", "enabled", "in_service")}),
        ("Limit", {"fields": ("limit", "deadband")}),
        ("Timing", {"fields": ("on_delay", "off_delay", "realarm_after", "stale_after")}),
        ("Digital state", {"fields": ("alarm_state_value",)}),
        ("History", {"fields": ("created_at",)}),
    )


class AlarmTransitionInline(admin.TabularInline):
    model = AlarmTransition
    fields = ("time", "recorded_at", "action", "from_state", "to_state", "actor", "comment", "value")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alarm)
class AlarmAdmin(admin.ModelAdmin):
    list_display = (
        "message",
        "unit",
        "priority",
        "state",
        "condition_active",
        "activated_at",
        "acknowledged_by",
        "backfilled",
    )
    list_filter = ("state", "priority", "condition_active", "backfilled", "unit")
    search_fields = ("message",)
    date_hierarchy = "activated_at"
    list_select_related = ("unit__site", "acknowledged_by")
    inlines = (AlarmTransitionInline,)
    actions = ("acknowledge_selected",)

    def get_readonly_fields(self, request, obj=None):
        # Occurrences change only through the evaluator and the operator services.
        return [field.name for field in Alarm._meta.concrete_fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Acknowledge selected alarms", permissions=["change"])
    def acknowledge_selected(self, request, queryset):
        acknowledged = 0
        for alarm in queryset:
            try:
                acknowledge_alarm(alarm, actor=request.user, comment="Acknowledged in the admin.")
            except AlarmActionError as exc:
                logger.info("Admin acknowledgement of alarm %s by user %s rejected: %s", alarm.pk, request.user.pk, exc)
                self.message_user(request, str(exc), messages.WARNING)
            else:
                acknowledged += 1
        if acknowledged:
            self.message_user(request, f"Acknowledged {acknowledged} alarms.", messages.SUCCESS)
