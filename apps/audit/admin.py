from axes import admin as axes_admin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib import admin
from rest_framework_simplejwt.token_blacklist import admin as blacklist_admin
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken

from .choices import AuditAction
from .mixins import AuditedModelAdminMixin
from .models import AuditEntry, AuditSettings, CredentialNetwork


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


@admin.register(AuditSettings)
class AuditSettingsAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    """The tenant's one row of monitoring thresholds, working hours and retention; changes are audited."""

    fieldsets = (
        ("Failed logins", {"fields": ("failed_login_limit", "failed_login_window_minutes")}),
        ("Permission denials", {"fields": ("denial_limit", "denial_window_minutes")}),
        ("Working hours of setpoint writes", {"fields": ("time_zone", "working_days", "working_hours_start",
                                                         "working_hours_end")}),
        ("Retention", {"fields": ("retention_days",)}),
    )

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not AuditSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CredentialNetwork)
class CredentialNetworkAdmin(admin.ModelAdmin):
    """Networks each JWT user and API key was seen from; kept by the security monitor alone."""

    list_display = ("credential_type", "credential_id", "network", "first_seen")
    list_filter = ("credential_type",)
    search_fields = ("credential_id", "network")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _audit_third_party_admin(model, base_admin, **attributes):
    """Register `model` again with `base_admin` plus AuditedModelAdminMixin, keeping its list and filters.

    ``attributes`` are set on the new admin class, e.g. its ``audit_detail``.
    """
    if not admin.site.is_registered(model):
        return  # e.g. AXES_ENABLE_ADMIN = False
    if model is AccessAttempt:
        # The "Clean up expired attempts" action deletes through the axes handler, unseen by the mixin;
        # selecting the attempts and deleting them is audited instead.
        attributes["actions"] = []
    audited = type(f"Audited{base_admin.__name__}", (AuditedModelAdminMixin, base_admin), attributes)
    admin.site.unregister(model)
    admin.site.register(model, audited)


# Deleting login attempts unlocks an account and deleting blacklisted tokens revives them, so these
# admins of django-axes and simplejwt are audited like ThermaCore's own. Importing their admin
# modules first registers them, whatever the order of INSTALLED_APPS.
for _model, _base in (
    (AccessAttempt, axes_admin.AccessAttemptAdmin),
    (AccessLog, axes_admin.AccessLogAdmin),
    (AccessFailureLog, axes_admin.AccessFailureLogAdmin),
    (BlacklistedToken, blacklist_admin.BlacklistedTokenAdmin),
):
    _audit_third_party_admin(_model, _base)

# Deleting a user's TOTP device lets anyone with the password enrol a new second factor.
if apps.is_installed("django_otp.plugins.otp_totp"):
    from django_otp.plugins.otp_totp import admin as totp_admin
    from django_otp.plugins.otp_totp.models import TOTPDevice

    # The same events as the enrolment page writes (apps.accounts.two_factor), so one filter finds both.
    TWO_FACTOR_EVENTS = {
        AuditAction.OBJECT_CREATED: "two_factor_enrolled",
        AuditAction.OBJECT_UPDATED: "two_factor_changed",
        AuditAction.OBJECT_DELETED: "two_factor_removed",
    }

    def _two_factor_detail(model_admin, device, action):
        return {"event": TWO_FACTOR_EVENTS[action], "user": device.user.get_username(), "device": device.name}

    _audit_third_party_admin(TOTPDevice, totp_admin.TOTPDeviceAdmin, audit_detail=_two_factor_detail)
