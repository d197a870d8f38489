"""ASGI middleware that authenticates a WebSocket inside its tenant's schema.

Browsers send their session cookie; API clients send ``Authorization:
Bearer <access token>``. Both are checked against the users of the tenant
that TenantWebSocketMiddleware resolved, never of another schema. A cookie
counts only when the Origin header names the same scheme and host, because a browser
sends cookies along with a WebSocket that another site opens.
"""

import logging
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django_otp import DEVICE_ID_SESSION_KEY
from django_tenants.utils import schema_context
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

from .authentication import TenantJWTAuthentication

logger = logging.getLogger(__name__)


def _header(scope, wanted):
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1")
    return ""


def same_origin(origin, host, websocket_scheme):
    """Return whether a browser's Origin header names the page's own scheme and host.

    "null" (sandboxed frames, file pages) and any other site do not count.
    """
    parts = urlsplit(origin)
    expected_scheme = "https" if websocket_scheme == "wss" else "http"
    return parts.scheme == expected_scheme and bool(host) and parts.netloc.lower() == host.lower()


@database_sync_to_async
def authenticate_scope(scope):
    schema = scope["tenant"].schema_name
    authorization = _header(scope, b"authorization")
    with schema_context(schema):
        if authorization.lower().startswith("bearer "):
            authenticator = TenantJWTAuthentication()
            try:
                token = authenticator.get_validated_token(authorization.split(" ", 1)[1].strip().encode())
                return authenticator.get_user(token)
            except (InvalidToken, TokenError, AuthenticationFailed) as exc:
                logger.info("WebSocket bearer token rejected on schema %s: %s", schema, exc)
                return AnonymousUser()
        session_key = parse_cookie(_header(scope, b"cookie")).get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return AnonymousUser()
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        if not same_origin(origin, host, scope.get("scheme", "ws")):
            logger.warning("WebSocket session on schema %s rejected: origin %r does not match host %r", schema, origin, host)
            return AnonymousUser()
        session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = get_user(SimpleNamespace(session=session))
        # A session that has not passed the TOTP step its role requires opens no WebSocket.
        if user.is_authenticated and user.role in getattr(scope["tenant"], "two_factor_roles", ()) \
                and not session.get(DEVICE_ID_SESSION_KEY):
            logger.info("WebSocket session of user %s on schema %s lacks the two-factor step", user.pk, schema)
            return AnonymousUser()
        return user


class TenantAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        user = await authenticate_scope(scope)
        return await self.inner(dict(scope, user=user), receive, send)
