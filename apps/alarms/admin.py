import logging

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models
from django.template.response import TemplateResponse

from apps.audit.mixins import AuditedModelAdminMixin

from .models import Alarm, AlarmRule, AlarmTransition, NotificationDelivery, NotificationTarget
from .notifications import create_notification_target, rotate_webhook_secret
from .permissions import can_acknowledge_alarm, visible_sources
from .services import AlarmActionError, acknowledge_alarm, remove_rule_from_service, return_rule_to_service

logger = logging.getLogger(__name__)


class ServiceReasonForm(forms.Form):
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), max_length=2000, help_text="Why; stored with each rule's audit entry."
    )


@admin.register(AlarmRule)
class AlarmRuleAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
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
    autocomplete_fields = ("sensor", "setpoint_sensor")
    # In-service changes go through the services so the open alarm follows.
    readonly_fields = ("in_service", "created_at")
    fieldsets = (
        (None, {"fields": ("sensor", "condition", "priority", "message", "rationale", "enabled", "in_service")}),
        ("Limit", {"fields": ("limit", "deadband")}),
        ("Rate of change", {"fields": ("rate_window", "rate_per")}),
        ("Deviation", {"fields": ("setpoint", "setpoint_sensor", "band")}),
        ("Timing", {"fields": ("on_delay", "off_delay", "realarm_after", "stale_after")}),
        ("Digital state", {"fields": ("alarm_state_value",)}),
        ("History", {"fields": ("created_at",)}),
    )
    actions = ("remove_selected_from_service", "return_selected_to_service")

    @admin.action(description="Remove selected rules from service", permissions=["change"])
    def remove_selected_from_service(self, request, queryset):
        return self._change_service(
            request, queryset, remove_rule_from_service, "remove_selected_from_service", "Removed from service"
        )

    @admin.action(description="Return selected rules to service", permissions=["change"])
    def return_selected_to_service(self, request, queryset):
        return self._change_service(
            request, queryset, return_rule_to_service, "return_selected_to_service", "Returned to service"
        )

    def _change_service(self, request, queryset, service, action_name, done):
        """Ask for a reason on an intermediate page, then apply ``service`` to each selected rule."""
        form = ServiceReasonForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": self.get_actions(request)[action_name][2],
                "rules": queryset,
                "form": form,
                "action_name": action_name,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "alarms/admin/service_reason.html", context)

        changed = 0
        for rule in queryset:
            try:
                service(rule, actor=request.user, comment=form.cleaned_data["comment"])
            except AlarmActionError as exc:
                logger.info("Admin service change of alarm rule %s by user %s rejected: %s", rule.pk, request.user.pk, exc)
                self.message_user(request, str(exc), messages.WARNING)
            else:
                changed += 1
        if changed:
            self.message_user(request, f"{done}: {changed} alarm rules.", messages.SUCCESS)
        return None


class AlarmTransitionInline(admin.TabularInline):
    model = AlarmTransition
    fields = ("time", "recorded_at", "action", "from_state", "to_state", "actor", "comment", "value")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alarm)
class AlarmAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = (
        "message",
        "source",
        "unit",
        "priority",
        "state",
        "condition_active",
        "activated_at",
        "acknowledged_by",
        "backfilled",
    )
    list_filter = ("source", "state", "priority", "condition_active", "backfilled", "unit")
    search_fields = ("message", "key")
    date_hierarchy = "activated_at"
    list_select_related = ("unit__site", "acknowledged_by")
    inlines = (AlarmTransitionInline,)
    actions = ("acknowledge_selected",)

    def get_queryset(self, request):
        return super().get_queryset(request).of_sources(visible_sources(request.user))

    def get_readonly_fields(self, request, obj=None):
        # Occurrences change only through the evaluator and the operator services.
        return [field.name for field in Alarm._meta.concrete_fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Acknowledge selected alarms", permissions=["change"])
    def acknowledge_selected(self, request, queryset):
        acknowledged = 0
        for alarm in queryset:
            if not can_acknowledge_alarm(request.user, alarm):
                self.message_user(
                    request, f"Your role may not acknowledge {alarm.get_source_display().lower()} alarm {alarm.pk}.",
                    messages.WARNING,
                )
                continue
            try:
                acknowledge_alarm(alarm, actor=request.user, comment="Acknowledged in the admin.")
            except AlarmActionError as exc:
                logger.info("Admin acknowledgement of alarm %s by user %s rejected: %s", alarm.pk, request.user.pk, exc)
                self.message_user(request, str(exc), messages.WARNING)
            else:
                acknowledged += 1
        if acknowledged:
            self.message_user(request, f"Acknowledged {acknowledged} alarms.", messages.SUCCESS)


@admin.register(NotificationTarget)
class NotificationTargetAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "kind", "purpose", "min_priority", "escalate_after", "enabled")
    list_filter = ("kind", "purpose", "enabled")
    search_fields = ("name", "email", "url")
    actions = ("rotate_secrets",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        fields = {name: value for name, value in form.cleaned_data.items() if name in {f.name for f in obj._meta.fields}}
        target, secret = create_notification_target(actor=request.user, **fields)
        obj.pk = target.pk
        if secret is not None:
            self._show_secret(request, target, secret)

    @admin.action(description="Rotate the signing secret of selected webhooks", permissions=["change"])
    def rotate_secrets(self, request, queryset):
        for target in queryset.filter(kind="webhook"):
            self._show_secret(request, target, rotate_webhook_secret(target, actor=request.user))

    def _show_secret(self, request, target, secret):
        self.message_user(
            request,
            f"Signing secret of {target.name}: {secret} (copy it now; it is stored encrypted and not shown again).",
            messages.WARNING,
        )


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "created_at", "target", "alarm", "event", "status", "attempts", "response_status", "delivered_at",
        "claimed_until", "next_attempt_at",
    )
    list_filter = ("status", "event", "target")
    list_select_related = ("target", "alarm")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in NotificationDelivery._meta.concrete_fields]

    def has_add_permission(self, request):
        return False
