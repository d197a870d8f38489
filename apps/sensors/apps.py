from django.apps import AppConfig


class SensorsConfig(AppConfig):
    name = "apps.sensors"
    verbose_name = "Sensors"
