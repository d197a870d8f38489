from django.apps import AppConfig


class UnitsConfig(AppConfig):
    name = "apps.units"
    verbose_name = "Sites and units"
