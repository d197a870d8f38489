"""URLs of the platform API and its OpenAPI schema, included by the public domain's URLconf only."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from .platform_api import IsPlatformStaff, ProvisioningJobViewSet, TenantExportViewSet, TenantViewSet

router = SimpleRouter()
router.register("tenants", TenantViewSet, basename="platform-tenant")
router.register("provisioning-jobs", ProvisioningJobViewSet, basename="platform-provisioning-job")
router.register("tenant-exports", TenantExportViewSet, basename="platform-tenant-export")

urlpatterns = [
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
