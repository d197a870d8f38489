"""URLs of a tenant domain: dashboards, the tenant's admin, the REST API and its docs."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.accounts.views import LoginView

admin.site.site_header = "ThermaCore configuration"
admin.site.site_title = "ThermaCore"

urlpatterns = [
    path("", include("apps.dashboards.urls")),
    path("alarms/", include("apps.alarms.urls")),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("apps.accounts.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("apps.api.urls")),
    path("audit/", include("apps.audit.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file, which the Content Security Policy allows.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
]

# A 403 page that names the role, what it may do and the pages it may open.
handler403 = "apps.dashboards.views.permission_denied"
