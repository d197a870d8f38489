"""ASGI middleware that resolves the tenant of a WebSocket from its Host header."""

import logging

from channels.db import database_sync_to_async
from django_tenants.utils import get_public_schema_name, remove_www, schema_context

from apps.accounts.asgi import reject_websocket

from .models import Domain

logger = logging.getLogger(__name__)


def host_from_scope(scope):
    for name, value in scope.get("headers", []):
        if name == b"host":
            return remove_www(value.decode("latin-1").split(":")[0].lower())
    return ""


# Close codes of refused handshakes, as documented in docs/accounts.md.
CLOSE_SUSPENDED = 4403
CLOSE_UNKNOWN_HOST = 4404


@database_sync_to_async
def tenant_for_host(host):
    """Return the tenant serving ``host``, or None for unknown hosts and the public schema."""
    with schema_context(get_public_schema_name()):
        domain = Domain.objects.select_related("tenant").filter(domain=host).first()
    if domain is None or domain.tenant.schema_name == get_public_schema_name():
        return None
    return domain.tenant


class TenantWebSocketMiddleware:
    """Put the tenant of the Host header into ``scope["tenant"]``; close unknown hosts and suspended tenants."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        host = host_from_scope(scope)
        tenant = await tenant_for_host(host)
        if tenant is None:
            logger.warning("WebSocket to %s rejected: no tenant has host %r", scope.get("path"), host)
            return await reject_websocket(receive, send, CLOSE_UNKNOWN_HOST, f"No tenant at host {host[:60]!r}.")
        if tenant.is_suspended:
            logger.info("WebSocket to suspended tenant schema=%s rejected", tenant.schema_name)
            return await reject_websocket(
                receive, send, CLOSE_SUSPENDED, "Tenant suspended; contact the platform operator."
            )
        return await self.inner(dict(scope, tenant=tenant), receive, send)
