"""URLs of the public (platform) domain, outside any tenant."""

from django.urls import path

from apps.tenants.admin import platform_admin_site

urlpatterns = [
    path("admin/", platform_admin_site.urls),
]
