"""URLs of the public (platform) domain, outside any tenant."""

from django.urls import include, path

from apps.tenants.admin import platform_admin_site

urlpatterns = [
    path("admin/", platform_admin_site.urls),
    path("api/platform/", include("apps.tenants.platform_urls")),
]
