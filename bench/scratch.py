"""Scratch tenant and sensors for the benchmarks, removed again when a run ends.

Import this module before any other project module: it sets up Django.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")
os.environ.setdefault("THERMACORE_LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection
from django_tenants.utils import schema_context

from apps.sensors.models import Sensor
from apps.telemetry import latest
from apps.tenants.models import Tenant
from apps.tenants.services import provision_tenant
from apps.units.models import Site, Unit


@contextmanager
def scratch_tenant(schema):
    """Provision tenant ``schema`` (dropping a leftover of an aborted run first) and drop it on exit."""
    if Tenant.objects.filter(schema_name=schema).exists():
        Tenant.objects.get(schema_name=schema).delete(force_drop=True)
    tenant = provision_tenant(
        schema_name=schema, name=f"Benchmark {schema}", domain=f"{schema.replace('_', '-')}.localhost",
        admin_username="bench", admin_password="Bench-password-4711",
    )
    try:
        with schema_context(schema):
            yield tenant
    finally:
        connection.set_schema_to_public()
        tenant.delete(force_drop=True)
        latest.clear_latest(schema)


def make_sensors(count, prefix):
    """Create ``count`` temperature sensors (range -50 to 150) on one unit; return their ids."""
    site, _ = Site.objects.get_or_create(name="Bench site")
    unit, _ = Unit.objects.get_or_create(site=site, name=f"Bench unit {prefix}", defaults={"kind": "boiler"})
    return [
        Sensor.objects.create(unit=unit, name=f"{prefix} {index}", key=f"{prefix}_{index}", quantity="temperature",
                              minimum=-50, maximum=150).id
        for index in range(count)
    ]
