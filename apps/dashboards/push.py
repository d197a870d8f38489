"""Push of new live values to the WebSocket clients watching a unit."""

import logging

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django_tenants.utils import schema_context

from apps.sensors.models import Sensor
from apps.telemetry import latest

from .groups import unit_group

logger = logging.getLogger(__name__)


def push_readings(schema, samples, live_sensor_ids):
    """Send each changed live value once to the group of its unit.

    Only the newest sample per sensor is sent, and only for sensors whose
    live value changed, so a backlog of late readings sends nothing.
    """
    if not live_sensor_ids:
        return
    newest = {}
    for sample in samples:
        if sample.sensor_id in live_sensor_ids:
            current = newest.get(sample.sensor_id)
            if current is None or sample.time > current.time:
                newest[sample.sensor_id] = sample
    with schema_context(schema):
        unit_of = dict(Sensor.objects.filter(id__in=newest).values_list("id", "unit_id"))

    by_unit = {}
    for sensor_id, sample in newest.items():
        by_unit.setdefault(unit_of.get(sensor_id), []).append(
            {
                "sensor": sensor_id,
                "time": sample.time.isoformat(),
                "value": sample.value,
                "quality": int(sample.quality),
            }
        )
    layer = get_channel_layer()
    for unit_id, readings in by_unit.items():
        if unit_id is None:
            continue
        async_to_sync(layer.group_send)(
            unit_group(schema, unit_id), {"type": "readings.update", "readings": readings}
        )
    logger.debug("Schema %s: pushed %d live values to %d units", schema, len(newest), len(by_unit))


def dropped_messages_key(schema):
    return f"thermacore:{schema}:live:dropped"


async def count_dropped_messages(schema, count):
    """Add ``count`` to the tenant's total of live messages dropped for stalled clients (a Redis counter)."""
    await sync_to_async(latest.get_client().incrby, thread_sensitive=False)(dropped_messages_key(schema), count)


def dropped_messages(schema):
    """Return how many live messages were dropped for the tenant's stalled clients so far."""
    return int(latest.get_client().get(dropped_messages_key(schema)) or 0)
