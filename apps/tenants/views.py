"""The response to a request whose Host header names no tenant domain."""

import logging

from django.http import HttpResponseBadRequest
from django_tenants.middleware.main import TenantMainMiddleware

logger = logging.getLogger(__name__)


def unknown_host(request):
    """Return 400 naming the host; django-tenants calls this view (DEFAULT_NOT_FOUND_TENANT_VIEW)."""
    host = TenantMainMiddleware.hostname_from_request(request)
    logger.info("Request for unknown host %r rejected", host[:253])
    return HttpResponseBadRequest(
        f"Host {host[:253]!r} is not a domain of any tenant on this server; check the address.",
        content_type="text/plain; charset=utf-8",
    )
