from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.core.exceptions import PermissionDenied

from apps.audit.mixins import AuditedModelAdminMixin, AuditedPasswordChangeMixin
from apps.tenants.admin import platform_admin_site

from .models import User
from .services import check_admin_remains, human_admins, is_last_admin


class TenantUserChangeForm(UserChangeForm):
    def clean(self):
        cleaned_data = super().clean()
        check_admin_remains(
            self.instance, role=cleaned_data.get("role"), is_active=cleaned_data.get("is_active", False)
        )
        return cleaned_data


@admin.register(User)
class TenantUserAdmin(AuditedPasswordChangeMixin, AuditedModelAdminMixin, UserAdmin):
    """Users of one tenant; their rights come from the role alone, so groups and flags are hidden."""

    form = TenantUserChangeForm

    list_display = ("username", "email", "first_name", "last_name", "role", "is_active", "last_login")
    list_filter = ("role", "is_active")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Access", {"fields": ("role", "is_active")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "role", "password1", "password2")}),
    )
    readonly_fields = ("last_login", "date_joined")
    filter_horizontal = ()

    def has_delete_permission(self, request, obj=None):
        if obj is not None and is_last_admin(obj):
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        if not human_admins().exclude(pk__in=queryset.values("pk")).exists():
            raise PermissionDenied("Deleting these users would leave the tenant without an active Admin.")
        super().delete_queryset(request, queryset)


platform_admin_site.register(User, UserAdmin)
