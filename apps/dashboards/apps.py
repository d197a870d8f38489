from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    name = "apps.dashboards"
    verbose_name = "Dashboards"

    def ready(self):
        from apps.telemetry import subscribers

        from .push import push_readings

        subscribers.subscribe(push_readings)
