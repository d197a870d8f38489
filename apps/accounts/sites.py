"""The Django admin of a tenant, opened and filtered by the role layer instead of ``is_staff``."""

from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from . import roles
from .throttling import rate_limited_response


def can_use_admin(user):
    """Return whether the user may open the tenant's admin; each model page then checks the role layer."""
    return bool(roles.capabilities_of(user))


class RoleAdminAuthenticationForm(AdminAuthenticationForm):
    def confirm_login_allowed(self, user):
        if not user.is_active or not can_use_admin(user):
            raise ValidationError(
                "This account has no role that may use the configuration pages; ask a tenant admin.",
                code="invalid_login",
            )


class TenantAdminSite(AdminSite):
    """Admin site of a tenant: any user with a role may enter and is shown what the role allows."""

    login_form = RoleAdminAuthenticationForm

    def has_permission(self, request):
        return can_use_admin(request.user)

    def login(self, request, extra_context=None):
        if request.method == "POST":
            limited = rate_limited_response(request)
            if limited is not None:
                return limited
        return super().login(request, extra_context)
