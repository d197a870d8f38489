"""DRF authentication of a tenant: JWT bearer tokens bound to the tenant, and API keys of machine clients."""

import logging
from datetime import timedelta

from django.db import connection
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework_simplejwt.authentication import JWTAuthentication

from .tokens import check_token_tenant

logger = logging.getLogger(__name__)

# last_used_at is written at most this often per key, so busy clients cost no write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TenantJWTAuthentication(JWTAuthentication):
    """Accept a bearer token only on the tenant whose schema issued it."""

    def get_validated_token(self, raw_token):
        token = super().get_validated_token(raw_token)
        check_token_tenant(token)
        return token


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticate ``Authorization: Api-Key <prefix>.<secret>`` as the key's machine user.

    Keys live in the tenant schema, so a key of another tenant is simply not found.
    """

    keyword = "Api-Key"

    def authenticate(self, request):
        from .models import ApiKey

        scheme, _, key = get_authorization_header(request).decode("latin-1").partition(" ")
        if scheme != self.keyword:
            return None
        key = key.strip()
        if not key:
            raise exceptions.AuthenticationFailed("The Api-Key header has no key; send 'Api-Key <prefix>.<secret>'.")

        try:
            api_key = ApiKey.objects.get_from_key(key)
        except ApiKey.DoesNotExist:
            logger.info("Schema %s: API key with prefix %r rejected", connection.schema_name, key.partition(".")[0])
            raise exceptions.AuthenticationFailed("The API key is invalid or revoked.", code="api_key_invalid") from None
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed(
                f"The API key {api_key.prefix} expired at {api_key.expiry_date.isoformat()}; ask an admin for a new key.",
                code="api_key_expired",
            )
        user = api_key.user
        if not user.is_active:
            raise exceptions.AuthenticationFailed("The API key's account is deactivated.", code="user_inactive")

        now = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
        return user, api_key

    def authenticate_header(self, request):
        return self.keyword
