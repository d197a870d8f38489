from django.apps import AppConfig


class ProtocolsConfig(AppConfig):
    name = "apps.protocols"
    verbose_name = "Devices and protocols"

    def ready(self):
        # Drivers register themselves with the driver registry on import.
        # Connects the signal that deletes a poll group's beat entry with the group.
        from . import schedules  # noqa: F401
        from .drivers import dnp3, modbus_tcp, mqtt, opcua  # noqa: F401
