"""JWT serializers that bind every token to the tenant schema it was issued in.

User ids are only unique inside one tenant schema, so a token without a
tenant claim would let user 1 of one tenant act as user 1 of another.
"""

from django.db import connection
from rest_framework import exceptions
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken

TENANT_CLAIM = "tenant"


def check_token_tenant(token):
    """Raise AuthenticationFailed unless the token was issued for the current tenant schema."""
    if token.get(TENANT_CLAIM) != connection.schema_name:
        raise exceptions.AuthenticationFailed(
            "Token was issued for another tenant; request a token on this tenant's domain.",
            code="token_wrong_tenant",
        )


class TenantTokenObtainPairSerializer(TokenObtainPairSerializer):
    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        token[TENANT_CLAIM] = connection.schema_name
        return token


class TenantTokenRefreshSerializer(TokenRefreshSerializer):
    def validate(self, attrs):
        check_token_tenant(RefreshToken(attrs["refresh"]))
        return super().validate(attrs)
