from rest_framework_simplejwt.authentication import JWTAuthentication

from .tokens import check_token_tenant


class TenantJWTAuthentication(JWTAuthentication):
    """Accept a bearer token only on the tenant whose schema issued it."""

    def get_validated_token(self, raw_token):
        token = super().get_validated_token(raw_token)
        check_token_tenant(token)
        return token
