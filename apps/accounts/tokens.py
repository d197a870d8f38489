"""JWT serializers that bind every token to the tenant schema it was issued in.

User ids are only unique inside one tenant schema, so a token without a
tenant claim would let user 1 of one tenant act as user 1 of another.

Refresh tokens rotate: each refresh blacklists the presented token and
returns a new one, and logout blacklists the token it is given. A refresh
is refused (401, no token issued) when the user was deleted or deactivated
or changed their password after the token was issued.

A user whose role the tenant's policy names in ``two_factor_roles`` must
send the current TOTP code in ``otp_token`` to obtain a pair. The ``amr``
claim (RFC 8176 authentication methods) records whether the login passed
that step, and creating an API key requires it (check_token_second_factor).

Every pair also carries a login id, which rotation keeps and every access
token copies, so a logout closes the WebSockets opened with tokens of that
login (apps.accounts.sockets).
"""

import logging
import uuid
from functools import partial

from django.contrib.auth import get_user_model
from django.contrib.auth.models import update_last_login
from django.core.cache import cache
from django.db import connection, transaction
from rest_framework import exceptions, serializers
from rest_framework_simplejwt.serializers import (
    TokenBlacklistSerializer,
    TokenObtainPairSerializer,
    TokenObtainSerializer,
    TokenRefreshSerializer,
)
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken, Token
from rest_framework_simplejwt.utils import get_md5_hash_password

from apps.audit.choices import ActorType, AuditAction
from apps.audit.services import Actor, record
from apps.audit.signals import record_token_issued, record_token_refreshed

from .sockets import close_login_sockets
from .two_factor import check_api_code, second_factor_required

logger = logging.getLogger(__name__)

TENANT_CLAIM = "tenant"
# Random id of one token login; simplejwt copies it into each access token and keeps it on rotation.
LOGIN_CLAIM = "login"
# Authentication methods of the login (RFC 8176): "pwd", plus "otp" after a TOTP code; copied like the login id.
AMR_CLAIM = "amr"
PASSWORD_METHODS = ["pwd"]
TWO_FACTOR_METHODS = ["pwd", "otp"]


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


def check_token_second_factor(user, token):
    """Raise PermissionDenied when ``token`` is a JWT whose login skipped the TOTP step that ``user``'s role requires.

    Such a token was issued before the policy named the role, or before
    tokens carried the ``amr`` claim. Session requests have passed the
    TOTP step in TenantSecurityPolicyMiddleware, and API keys are not JWTs.
    """
    if not isinstance(token, Token) or not second_factor_required(user):
        return
    if "otp" not in (token.get(AMR_CLAIM) or ()):
        logger.info("Schema %s: user %s used a token without the TOTP step for an action that needs it",
                    connection.schema_name, user.pk)
        raise exceptions.PermissionDenied(
            "Your role requires two-factor authentication, and this token was issued without a two-factor code; "
            "request a new token from /api/v1/auth/token/ with otp_token.",
            code="two_factor_required",
        )


class TenantTokenObtainPairSerializer(TokenObtainPairSerializer):
    otp_token = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=16,
        help_text="Current code of your TOTP device; required when the tenant's policy names your role.",
    )

    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        token[TENANT_CLAIM] = connection.schema_name
        token[LOGIN_CLAIM] = uuid.uuid4().hex
        token[AMR_CLAIM] = PASSWORD_METHODS
        return token

    def validate(self, attrs):
        # TokenObtainPairSerializer.validate() would create the refresh token
        # (an OutstandingToken row) before the code is checked, so its steps are repeated here.
        data = TokenObtainSerializer.validate(self, attrs)
        methods = PASSWORD_METHODS
        if second_factor_required(self.user):
            check_api_code(self.user, attrs.get("otp_token"), self.context.get("request"))
            methods = TWO_FACTOR_METHODS

        refresh = self.get_token(self.user)
        refresh[AMR_CLAIM] = methods
        data["refresh"] = str(refresh)
        data["access"] = str(refresh.access_token)
        if api_settings.UPDATE_LAST_LOGIN:
            update_last_login(None, self.user)

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
