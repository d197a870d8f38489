"""ASGI middleware that authenticates a WebSocket inside its tenant's schema.

Browsers send their session cookie. API clients send ``Authorization:
Bearer <access token>`` or ``Authorization: Api-Key <prefix>.<secret>`` on the
handshake; a key in the query string would land in access logs and is not
read. Every credential is checked against the users of the tenant that
TenantWebSocketMiddleware resolved, never of another schema. A cookie
counts only when the Origin header names the same scheme and host, because a browser
sends cookies along with a WebSocket that another site opens. A client outside
the tenant's allowed networks is closed with 4403 and, when it authenticated,
the denial is audited.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
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
from ipware import get_client_ip
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError

from apps.audit.choices import AuditAction, Outcome
from apps.audit.services import record
from apps.tenants.policy import address_allowed

from .authentication import ApiKeyAuthentication, TenantJWTAuthentication
from .sockets import login_group, session_group, tenant_group, user_group
from .tokens import LOGIN_CLAIM, login_ended

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


@dataclass(frozen=True)
class SocketCredential:
    """Credential a WebSocket authenticated with. ``kind`` is "session", "jwt", "api_key" or "" (anonymous).

    ``groups`` are the Channels groups whose close messages end the socket.
    ``expires_at`` is when the token or key stops being valid, None when it has no fixed end.
    """

    kind: str = ""
    groups: tuple = ()
    expires_at: datetime | None = None
    api_key: object = None


ANONYMOUS = SocketCredential()


def request_meta(scope):
    """Return the handshake as a Django-style META dict, so django-ipware finds the client address as for HTTP."""
    client = scope.get("client") or ("", 0)
    meta = {"REMOTE_ADDR": client[0] or "", "PATH_INFO": scope.get("path", "")}
    for name, value in scope.get("headers", []):
        if name in (b"authorization", b"cookie"):
            continue
        meta["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode("latin-1")
    return meta


def _user_groups(schema, user):
    return (user_group(schema, user.pk), tenant_group(schema))


def _authenticate_bearer(scope, schema, raw_token):
    authenticator = TenantJWTAuthentication()
    try:
        token = authenticator.get_validated_token(raw_token.encode())
        user = authenticator.get_user(token)
    except (InvalidToken, TokenError, AuthenticationFailed) as exc:
        logger.info("WebSocket bearer token rejected on schema %s: %s", schema, exc)
        return AnonymousUser(), ANONYMOUS
    if login_ended(schema, token.get(LOGIN_CLAIM)):
        # REST requests still accept such a token until it expires, but a logout ends its sockets for good.
        logger.info("WebSocket bearer token of user %s on schema %s rejected: its login was logged out",
                    user.pk, schema)
        return AnonymousUser(), ANONYMOUS
    expires_at = datetime.fromtimestamp(token["exp"], tz=UTC) if "exp" in token else None
    groups = _user_groups(schema, user)
    if token.get(LOGIN_CLAIM):
        # A JWT logout closes the sockets of its login through this group.
        groups = (*groups, login_group(schema, token[LOGIN_CLAIM]))
    return user, SocketCredential("jwt", groups, expires_at)


def _authenticate_api_key(scope, schema, authorization):
    # The same checks as for the REST API: unknown, revoked and expired keys and deactivated machine users fail.
    request = SimpleNamespace(headers={"authorization": authorization}, META={"HTTP_AUTHORIZATION": authorization})
    try:
        user, api_key = ApiKeyAuthentication().authenticate(request)
    except AuthenticationFailed as exc:
        logger.info("WebSocket API key rejected on schema %s: %s", schema, exc.detail)
        return AnonymousUser(), ANONYMOUS
    return user, SocketCredential("api_key", _user_groups(schema, user), api_key.expiry_date, api_key)


def _authenticate_session(scope, schema):
    session_key = parse_cookie(_header(scope, b"cookie")).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return AnonymousUser(), ANONYMOUS
    origin = _header(scope, b"origin")
    host = _header(scope, b"host")
    if not same_origin(origin, host, scope.get("scheme", "ws")):
        logger.warning("WebSocket session on schema %s rejected: origin %r does not match host %r", schema, origin, host)
        return AnonymousUser(), ANONYMOUS
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(SimpleNamespace(session=session))
    if not user.is_authenticated:
        return user, ANONYMOUS
    # A session that has not passed the TOTP step its role requires opens no WebSocket.
    if user.role in getattr(scope["tenant"], "two_factor_roles", ()) and not session.get(DEVICE_ID_SESSION_KEY):
        logger.info("WebSocket session of user %s on schema %s lacks the two-factor step", user.pk, schema)
        return AnonymousUser(), ANONYMOUS
    return user, SocketCredential("session", (*_user_groups(schema, user), session_group(schema, session_key)))


def _record_network_denial(scope, schema, user, credential, client_ip):
    request = SimpleNamespace(META=request_meta(scope), auth=credential.api_key, correlation_id=None)
    with schema_context(schema):
        record(
            AuditAction.PERMISSION_DENIED,
            actor=user,
            outcome=Outcome.DENIED,
            detail={
                "method": "WEBSOCKET",
                "path": scope.get("path", ""),
                "reason": f"address {client_ip} is not in the tenant's allowed networks",
                "code": "network_not_allowed",
            },
            request=request,
        )


@database_sync_to_async
def authenticate_scope(scope):
    """Return (user, SocketCredential, rejection) of a handshake; rejection is None or (close code, reason)."""
    tenant = scope["tenant"]
    schema = tenant.schema_name
    authorization = _header(scope, b"authorization")
    with schema_context(schema):
        if authorization.lower().startswith("bearer "):
            user, credential = _authenticate_bearer(scope, schema, authorization.split(" ", 1)[1].strip())
        elif authorization.startswith(ApiKeyAuthentication.keyword + " "):
            user, credential = _authenticate_api_key(scope, schema, authorization)
        else:
            user, credential = _authenticate_session(scope, schema)

    client_ip, _routable = get_client_ip(SimpleNamespace(META=request_meta(scope)))
    if address_allowed(tenant, client_ip):
        return user, credential, None
    logger.info("WebSocket from %s to schema %s rejected by its allowed networks (user %s)",
                client_ip, schema, user.pk)
    if user.is_authenticated:
        # Like the HTTP denials, only authenticated clients are audited, so strangers cannot fill the trail.
        _record_network_denial(scope, schema, user, credential, client_ip)
    return user, credential, (CLOSE_NETWORK_NOT_ALLOWED, f"Address {client_ip} is not in the tenant's allowed networks.")


# The same code the live consumer uses for a role that may not view the plant.
CLOSE_NETWORK_NOT_ALLOWED = 4403


async def reject_websocket(receive, send, code, reason):
    """Accept the handshake and close at once with ``code``.

    A close before the accept would reach the client as an HTTP 403 of the handshake, without the code.
    NOTE: Daphne 4.2.3 sends no close reason (its serverClose passes only the code), so clients rely on codes.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason[:120]})


class TenantAuthMiddleware:
    """Put ``user`` and ``credential`` (a SocketCredential) into the scope, or reject a foreign network."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        user, credential, rejection = await authenticate_scope(scope)
        if rejection is not None:
            return await reject_websocket(receive, send, *rejection)
        return await self.inner(dict(scope, user=user, credential=credential), receive, send)
