"""Configuration of a tenant that watches the simulated plant."""

import logging

from django.db import transaction

from apps.sensors.models import Sensor
from apps.units.models import Site, Unit

from ..models import Device, Point
from .plant import PLANT

logger = logging.getLogger(__name__)

DEMO_SITE = "Demo energy centre"


@transaction.atomic
def configure_demo_plant(*, host="127.0.0.1", port=5020, poll_interval=2.0, site_name=DEMO_SITE):
    """Create (or update) a site whose units, sensors, devices and points match the simulator.

    Running it again changes nothing but the simulator's address and the poll interval.
    """
    site, _ = Site.objects.get_or_create(name=site_name, defaults={"address": "Simulated plant on loopback"})
    for simulated in PLANT:
        unit, _ = Unit.objects.get_or_create(
            site=site,
            name=simulated.name,
            defaults={"kind": simulated.kind, "manufacturer": "ThermaCore", "model": "Simulator",
                      "serial_number": f"SIM-{simulated.device_id:03d}", "location": "Plant room"},
        )
        device, _ = Device.objects.update_or_create(
            name=f"{simulated.name} controller",
            defaults={"host": host, "port": port, "unit_id": simulated.device_id, "poll_interval": poll_interval,
                      "timeout": 2.0, "enabled": True},
        )
        for simulated_point in simulated.points:
            sensor, _ = Sensor.objects.update_or_create(
                unit=unit,
                key=simulated_point.key,
                defaults={
                    "name": simulated_point.name,
                    "quantity": simulated_point.quantity,
                    "engineering_unit": simulated_point.unit,
                    "minimum": simulated_point.minimum,
                    "maximum": simulated_point.maximum,
                    "decimals": simulated_point.decimals,
                },
            )
            point = Point(
                device=device,
                sensor=sensor,
                register_type=simulated_point.register_type,
                address=simulated_point.address,
                data_type=simulated_point.data_type,
                byte_order=simulated_point.byte_order,
                scale=simulated_point.scale,
                offset=simulated_point.offset,
            )
            point.full_clean(exclude=["device", "sensor"])
            Point.objects.update_or_create(
                device=device,
                sensor=sensor,
                defaults={field: getattr(point, field) for field in (
                    "register_type", "address", "data_type", "byte_order", "scale", "offset")},
            )
    logger.info("Demo plant configured: site %r, %d units, simulator at %s:%s", site_name, len(PLANT), host, port)
    return site
