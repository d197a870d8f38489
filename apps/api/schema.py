"""OpenAPI descriptions of the project's own authentication classes for drf-spectacular."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class TenantJWTScheme(SimpleJWTScheme):
    """Document TenantJWTAuthentication as the bearer scheme simplejwt's tokens use."""

    target_class = "apps.accounts.authentication.TenantJWTAuthentication"
