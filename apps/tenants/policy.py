"""Per-tenant security policy: password length, session timeout and the networks allowed to call the API."""

import ipaddress
import logging
import zoneinfo

from django.contrib.auth.password_validation import MinimumLengthValidator
from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from ipware import get_client_ip

from .quotas import QuotaExceeded, current_tenant

logger = logging.getLogger(__name__)


class TenantMinimumLengthValidator(MinimumLengthValidator):
    """Django's minimum length check with the length of the current tenant's ``password_min_length``.

    In the public schema (platform admin, provisioning) the length configured
    in AUTH_PASSWORD_VALIDATORS applies.
    """

    def __init__(self, min_length=12):
        super().__init__(min_length=min_length)
        self.default_min_length = min_length

    def _apply_tenant_length(self):
        tenant = current_tenant()
        self.min_length = tenant.password_min_length if tenant is not None else self.default_min_length

    def validate(self, password, user=None):
        self._apply_tenant_length()
        super().validate(password, user)

    def get_help_text(self):
        self._apply_tenant_length()
        return super().get_help_text()


def address_allowed(tenant, client_ip):
    """Return whether ``client_ip`` lies in one of the tenant's ``api_allowed_networks`` (any address when empty).

    A missing or unparsable address is never allowed by a non-empty list.
    """
    if not tenant.api_allowed_networks:
        return True
    try:
        address = ipaddress.ip_address(client_ip)
    except (TypeError, ValueError):
        return False
    return any(address in ipaddress.ip_network(network) for network in tenant.api_allowed_networks)


class TenantSecurityPolicyMiddleware:
    """Apply the tenant's time zone, session timeout, two-factor roles and the networks allowed to call its API.

    A session user whose role is in ``two_factor_roles`` is sent to the TOTP
    step until django-otp marks the session verified. Must come after
    django-otp's OTPMiddleware. WebSocket connections are checked in
    apps.accounts.asgi instead.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        tenant = current_tenant()
        if tenant is None:
            return self.get_response(request)

        if request.path.startswith("/api/") and tenant.api_allowed_networks:
            rejection = self._reject_foreign_address(request, tenant)
            if rejection is not None:
                return rejection

        if request.path.startswith("/api/"):
            return self._apply_policy(request, tenant)

        # Pages and forms show and read local times in the tenant's time zone. The API and storage stay in UTC.
        timezone.activate(zoneinfo.ZoneInfo(tenant.time_zone))
        try:
            return self._apply_policy(request, tenant)
        finally:
            timezone.deactivate()

    def _apply_policy(self, request, tenant):
        if request.user.is_authenticated:
            # Django counts the expiry from the last time the session was saved, so this is an idle timeout.
            timeout = tenant.session_timeout_minutes * 60
            if request.session.get_expiry_age() != timeout:
                request.session.set_expiry(timeout)
            if self._second_factor_missing(request, tenant):
                return self._ask_for_second_factor(request)
        return self.get_response(request)

    def process_exception(self, request, exception):
        # DRF turns a QuotaExceeded into a JSON 403 itself; this shows the admin and pages which quota was hit.
        if isinstance(exception, QuotaExceeded):
            return HttpResponseForbidden(str(exception), content_type="text/plain; charset=utf-8")
        return None

    def _second_factor_missing(self, request, tenant):
        user = request.user
        if user.role not in tenant.two_factor_roles or user.is_verified():
            return False
        exempt = (reverse("two_factor_verify"), reverse("two_factor_setup"), reverse("logout"))
        return request.path not in exempt

    def _ask_for_second_factor(self, request):
        if request.path.startswith("/api/"):
            return JsonResponse(
                {
                    "detail": "This session has not passed the two-factor step that your role requires; "
                    f"complete it at {reverse('two_factor_verify')} or use a token from /api/v1/auth/token/.",
                    "code": "two_factor_required",
                },
                status=403,
            )
        return redirect(f"{reverse('two_factor_verify')}?{urlencode({'next': request.get_full_path()})}")

    def _reject_foreign_address(self, request, tenant):
        client_ip, _routable = get_client_ip(request)
        if address_allowed(tenant, client_ip):
            return None
        logger.info("Tenant %s: API request from %s rejected by its allowed networks", tenant.schema_name, client_ip)
        return JsonResponse(
            {
                "detail": (
                    f"API requests from {client_ip} are not allowed for tenant {tenant.schema_name!r}; "
                    f"allowed networks are {', '.join(tenant.api_allowed_networks)}. "
                    "Ask the platform operator to add your network."
                ),
                "code": "network_not_allowed",
            },
            status=403,
        )
