"""JWT issue, refresh and logout for platform staff, served on the public domain only.

The tokens are the tenant tokens of apps.accounts.tokens with the public
schema in their tenant claim, so every tenant domain rejects them and the
platform API rejects tenant tokens. Outstanding and blacklisted refresh
tokens of platform staff are stored in the public schema's token_blacklist
tables. The public schema has no audit trail, so issue, refresh and logout
are logged instead of audited.
"""

import logging

from django.db import connection
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework_simplejwt.settings import api_settings

from apps.accounts.tokens import (
    TenantTokenBlacklistSerializer,
    TenantTokenObtainPairSerializer,
    TenantTokenRefreshSerializer,
)
from apps.accounts.views import LogoutView, TokenObtainPairView, TokenRefreshView

logger = logging.getLogger(__name__)

PLATFORM_TAG = "platform"
NOT_STAFF_MESSAGE = "Only platform staff get platform API tokens; log in with an active staff account."


def is_platform_staff(user):
    """Return whether ``user`` is an active staff user or superuser, as the platform admin site requires."""
    return bool(user and user.is_authenticated and user.is_active and (user.is_staff or user.is_superuser))


class PlatformTokenObtainPairSerializer(TenantTokenObtainPairSerializer):
    """Issue a token pair to a platform staff user; other public users get 401."""

    @classmethod
    def get_token(cls, user):
        # Checked before the refresh token is created, so no token of a non-staff user is stored as outstanding.
        if not is_platform_staff(user):
            logger.info("Platform token rejected for user %s: not platform staff", user.pk)
            raise exceptions.AuthenticationFailed(NOT_STAFF_MESSAGE, code="not_platform_staff")
        return super().get_token(user)

    def record_issued(self, user):
        logger.info("Platform token pair issued to user %s (%s)", user.pk, user.get_username())


class PlatformTokenRefreshSerializer(TenantTokenRefreshSerializer):
    """Rotate a platform refresh token; a user who lost staff rights since gets 401."""

    def check_user(self, user):
        if not is_platform_staff(user):
            raise exceptions.AuthenticationFailed(
                "The token's user is no longer platform staff; log in with an active staff account.",
                code="not_platform_staff",
            )

    def record_refreshed(self, token):
        logger.info("Platform refresh token %s of user %s rotated",
                    token[api_settings.JTI_CLAIM], token.get(api_settings.USER_ID_CLAIM))


class PlatformTokenBlacklistSerializer(TenantTokenBlacklistSerializer):
    """Blacklist a platform refresh token at logout."""

    def record_revoked(self, token, user_id):
        logger.info("Platform refresh token %s of user %s blacklisted at logout (schema %s)",
                    token[api_settings.JTI_CLAIM], user_id, connection.schema_name)


@extend_schema_view(post=extend_schema(tags=[PLATFORM_TAG], summary="Issue a platform token pair to staff"))
class PlatformTokenObtainPairView(TokenObtainPairView):
    """Issue an access and refresh token pair to platform staff; failed attempts count towards the login lockout."""

    serializer_class = PlatformTokenObtainPairSerializer


@extend_schema_view(post=extend_schema(tags=[PLATFORM_TAG], summary="Rotate a platform refresh token"))
class PlatformTokenRefreshView(TokenRefreshView):
    """Return a new platform token pair and blacklist the refresh token given."""

    serializer_class = PlatformTokenRefreshSerializer


@extend_schema_view(post=extend_schema(tags=[PLATFORM_TAG], summary="Blacklist a platform refresh token"))
class PlatformLogoutView(LogoutView):
    """Blacklist a platform refresh token; its access tokens stay valid until they expire."""

    serializer_class = PlatformTokenBlacklistSerializer
