from django.urls import include, path
from rest_framework.routers import DefaultRouter

from apps.accounts.views import ApiKeyViewSet, LogoutView, ProfileView, TokenObtainPairView, TokenRefreshView
from apps.alarms.api import AlarmRuleViewSet, AlarmViewSet, NotificationDeliveryViewSet, NotificationTargetViewSet

from . import views
from .csv_import import CsvImportJobDetailView, CsvImportJobListView, CsvImportView
from .ingest import IngestView


class APIRootView(DefaultRouter.APIRootView):
    # The list of endpoints contains no tenant data, so every role may read it.
    any_role_allowed = True


router = DefaultRouter()
router.APIRootView = APIRootView
router.register("api-keys", ApiKeyViewSet, basename="apikey")
router.register("sites", views.SiteViewSet)
router.register("units", views.UnitViewSet)
router.register("sensors", views.SensorViewSet)
router.register("devices", views.DeviceViewSet)
router.register("points", views.PointViewSet)
router.register("alarm-rules", AlarmRuleViewSet)
router.register("alarms", AlarmViewSet)
router.register("alarm-notification-targets", NotificationTargetViewSet)
router.register("alarm-notification-deliveries", NotificationDeliveryViewSet)

urlpatterns = [
    path("auth/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("auth/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("ingest/", IngestView.as_view(), name="ingest"),
    path("ingest/csv/", CsvImportView.as_view(), name="ingest_csv"),
    path("ingest/csv/jobs/", CsvImportJobListView.as_view(), name="ingest_csv_jobs"),
    path("ingest/csv/jobs/<int:pk>/", CsvImportJobDetailView.as_view(), name="ingest_csv_job"),
    path("auth/logout/", LogoutView.as_view(), name="auth_logout"),
    path("auth/me/", ProfileView.as_view(), name="auth_me"),
    path("audit/", include("apps.audit.api_urls")),
    path("", include(router.urls)),
]
