from django.apps import AppConfig


class ProtocolsConfig(AppConfig):
    name = "apps.protocols"
    verbose_name = "Devices and protocols"

    def ready(self):
        # Drivers register themselves with the driver registry on import.
        from .drivers import dnp3, modbus_tcp, mqtt, opcua  # noqa: F401
