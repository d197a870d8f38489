from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "apps.api"
    verbose_name = "REST API"

    def ready(self):
        # drf-spectacular finds authentication extensions by their import.
        from . import schema  # noqa: F401
