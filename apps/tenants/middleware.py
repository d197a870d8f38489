"""Reject every request to a suspended tenant's domains."""

import logging

from django.http import HttpResponseForbidden, JsonResponse

logger = logging.getLogger(__name__)

SUSPENDED_MESSAGE = "This tenant is suspended; its data is kept. Contact the platform operator to resume it."


class TenantSuspensionMiddleware:
    """Return 403 for a suspended tenant before any login, API or page view runs.

    Must come right after django-tenants' TenantMainMiddleware, which sets ``request.tenant``.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        tenant = getattr(request, "tenant", None)
        if tenant is not None and getattr(tenant, "is_suspended", False):
            logger.info("Request to suspended tenant schema=%s rejected: %s", tenant.schema_name, request.path)
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": SUSPENDED_MESSAGE, "code": "tenant_suspended"}, status=403)
            return HttpResponseForbidden(SUSPENDED_MESSAGE, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
