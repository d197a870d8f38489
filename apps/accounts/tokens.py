"""JWT serializers that bind every token to the tenant schema it was issued in.

User ids are only unique inside one tenant schema, so a token without a
tenant claim would let user 1 of one tenant act as user 1 of another.

Refresh tokens rotate: each refresh blacklists the presented token and
returns a new one, and logout blacklists the token it is given. A refresh
is refused (401, no token issued) when the user was deleted or deactivated
or changed their password after the token was issued.

Every pair also carries a login id, which rotation keeps and every access
token copies, so a logout closes the WebSockets opened with tokens of that
login (apps.accounts.sockets).
"""

import logging
import uuid
from functools import partial

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection, transaction
from rest_framework import exceptions
from rest_framework_simplejwt.serializers import (
    TokenBlacklistSerializer,
    TokenObtainPairSerializer,
    TokenRefreshSerializer,
)
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import get_md5_hash_password

from apps.audit.choices import ActorType, AuditAction
from apps.audit.services import Actor, record
from apps.audit.signals import record_token_issued, record_token_refreshed

from .sockets import close_login_sockets

logger = logging.getLogger(__name__)

TENANT_CLAIM = "tenant"
# Random id of one token login; simplejwt copies it into each access token and keeps it on rotation.
LOGIN_CLAIM = "login"


def _ended_login_key(schema, login_id):
    return f"jwt:{schema}:ended-login:{login_id}"


def end_login(schema, login_id):
    """Store in the cache, for one access-token lifetime, that a login was logged out, so it opens no new sockets."""
    cache.set(_ended_login_key(schema, login_id), 1, timeout=int(api_settings.ACCESS_TOKEN_LIFETIME.total_seconds()))


def login_ended(schema, login_id):
    return bool(login_id) and cache.get(_ended_login_key(schema, login_id)) is not None


def check_token_tenant(token):
    """Raise AuthenticationFailed unless the token was issued for the current tenant schema."""
    if token.get(TENANT_CLAIM) != connection.schema_name:
        raise exceptions.AuthenticationFailed(
            "Token was issued for another tenant; request a token on this tenant's domain.",
            code="token_wrong_tenant",
        )


def check_token_user(token):
    """Raise AuthenticationFailed unless the token's user exists, is active and kept their password.

    simplejwt checks this for access tokens only; its refresh serializer
    raises an unhandled DoesNotExist (a 500) for a deleted user.
    """
    user_id = token.get(api_settings.USER_ID_CLAIM)
    user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
    if user is None:
        raise exceptions.AuthenticationFailed("The token's user no longer exists.", code="user_not_found")
    if not api_settings.USER_AUTHENTICATION_RULE(user):
        raise exceptions.AuthenticationFailed("The token's user is deactivated.", code="user_inactive")
    if api_settings.CHECK_REVOKE_TOKEN and token.get(api_settings.REVOKE_TOKEN_CLAIM) != get_md5_hash_password(
        user.password
    ):
        raise exceptions.AuthenticationFailed(
            "The password was changed after this token was issued; log in again.", code="password_changed"
        )
    return user


class TenantTokenObtainPairSerializer(TokenObtainPairSerializer):
    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        token[TENANT_CLAIM] = connection.schema_name
        token[LOGIN_CLAIM] = uuid.uuid4().hex
        return token

    def validate(self, attrs):
        data = super().validate(attrs)
        self.record_issued(self.user)
        return data

    def record_issued(self, user):
        record_token_issued(user, self.context.get("request"))


class TenantTokenRefreshSerializer(TokenRefreshSerializer):
    def validate(self, attrs):
        token = RefreshToken(attrs["refresh"])
        check_token_tenant(token)
        user = check_token_user(token)
        self.check_user(user)
        # Two refreshes of one token at the same time would both pass the
        # blacklist check, so a row lock lets only the first one rotate it.
        with transaction.atomic():
            OutstandingToken.objects.select_for_update().filter(jti=token[api_settings.JTI_CLAIM]).first()
            data = super().validate(attrs)
            self.record_refreshed(token)
        return data

    def check_user(self, user):
        """Raise AuthenticationFailed when ``user`` may no longer refresh; subclasses add checks."""

    def record_refreshed(self, token):
        record_token_refreshed(token, self.context.get("request"))


class TenantTokenBlacklistSerializer(TokenBlacklistSerializer):
    """Blacklist a refresh token and close the WebSockets opened with access tokens of its login."""

    def validate(self, attrs):
        token = RefreshToken(attrs["refresh"])
        check_token_tenant(token)
        user_id = str(token.get(api_settings.USER_ID_CLAIM, ""))
        with transaction.atomic():
            result = super().validate(attrs)
            self.record_revoked(token, user_id)
            login_id = token.get(LOGIN_CLAIM)
            if login_id:
                transaction.on_commit(partial(end_login, connection.schema_name, login_id))
            close_login_sockets(connection.schema_name, user_id, login_id, "Logged out.")
        logger.info("Schema %s: refresh token of user %s blacklisted at logout", connection.schema_name, user_id)
        return result

    def record_revoked(self, token, user_id):
        username = get_user_model().objects.filter(pk=user_id).values_list("username", flat=True).first()
        record(
            AuditAction.TOKEN_REVOKED,
            actor=Actor(ActorType.USER, user_id, username or ""),
            detail={"jti": str(token[api_settings.JTI_CLAIM]), "reason": "logout"},
            request=self.context.get("request"),
        )
