"""URLs of the platform API and its OpenAPI schema, included by the public domain's URLconf only."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from .platform_api import IsPlatformStaff, ProvisioningJobViewSet, TenantExportViewSet, TenantViewSet
from .platform_tokens import PlatformLogoutView, PlatformTokenObtainPairView, PlatformTokenRefreshView

router = SimpleRouter()
router.register("tenants", TenantViewSet, basename="platform-tenant")
router.register("provisioning-jobs", ProvisioningJobViewSet, basename="platform-provisioning-job")
router.register("tenant-exports", TenantExportViewSet, basename="platform-tenant-export")

urlpatterns = [
    path("v1/auth/token/", PlatformTokenObtainPairView.as_view(), name="platform-token-obtain-pair"),
    path("v1/auth/token/refresh/", PlatformTokenRefreshView.as_view(), name="platform-token-refresh"),
    path("v1/auth/logout/", PlatformLogoutView.as_view(), name="platform-auth-logout"),
    path("v1/", include(router.urls)),
    path(
        "schema/",
        SpectacularAPIView.as_view(
            urlconf="thermacore.urls_public",
            permission_classes=[IsPlatformStaff],
            custom_settings={
                "TITLE": "ThermaCore platform API",
                "DESCRIPTION": "Provisioning, settings, suspension, export and deletion of tenants, for platform staff.",
            },
        ),
        name="platform-schema",
    ),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="platform-schema"), name="platform-swagger-ui"),
]
