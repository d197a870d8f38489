"""factory_boy factories for the tenant models; call them with the connection on a tenant schema."""

import factory

from apps.protocols.models import Device, Point
from apps.sensors.models import Sensor
from apps.units.models import Site, Unit


class SiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Site

    name = factory.Sequence(lambda n: f"Site {n}")


class UnitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Unit

    site = factory.SubFactory(SiteFactory)
    name = factory.Sequence(lambda n: f"Boiler {n}")
    kind = "boiler"


class SensorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Sensor

    unit = factory.SubFactory(UnitFactory)
    name = factory.Sequence(lambda n: f"Supply temperature {n}")
    key = factory.Sequence(lambda n: f"supply_temp_{n}")
    quantity = "temperature"
    engineering_unit = "°C"
    minimum = -20.0
    maximum = 120.0
    decimals = 1


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    name = factory.Sequence(lambda n: f"Controller {n}")
    host = "127.0.0.1"
    port = 502
    unit_id = 1
    poll_interval = 1.0
    timeout = 1.0


class PointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Point

    device = factory.SubFactory(DeviceFactory)
    sensor = factory.SubFactory(SensorFactory)
    register_type = "holding"
    address = 0
    data_type = "float32"
