"""Live push of one stored batch: one message per unit, newest value per sensor, over the real channel layer."""

import asyncio
from datetime import UTC, datetime, timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.dashboards.groups import unit_group
from apps.dashboards.push import push_readings
from apps.sensors.samples import Sample
from tests.factories import SensorFactory, UnitFactory

# push_readings returns after its sends completed, so a message that is missing after this wait was never sent.
RECEIVE_TIMEOUT = 1


async def _join(layer, group):
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return channel


async def _receive_all(layer, channel):
    """Return every message waiting on ``channel``."""
    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(layer.receive(channel), timeout=RECEIVE_TIMEOUT))
        except TimeoutError:
            return messages


def test_batch_sends_one_message_per_unit(alpha):
    layer = get_channel_layer()
    units = [UnitFactory() for _ in range(3)]
    sensors = {unit.pk: [SensorFactory(unit=unit) for _ in range(2)] for unit in units}
    channels = {unit.pk: async_to_sync(_join)(layer, unit_group("alpha", unit.pk)) for unit in units}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    samples = []
    for unit_sensors in sensors.values():
        for sensor in unit_sensors:
            samples.append(Sample(sensor.pk, start, 1.0, 0))
            samples.append(Sample(sensor.pk, start + timedelta(seconds=1), 2.0, 0))
    live = {sensor.pk for unit_sensors in sensors.values() for sensor in unit_sensors[:1]}

    push_readings("alpha", samples, live)

    for unit in units:
        messages = async_to_sync(_receive_all)(layer, channels[unit.pk])
        assert len(messages) == 1
        assert messages[0]["type"] == "readings.update"
        readings = messages[0]["readings"]
        assert [reading["sensor"] for reading in readings] == [sensors[unit.pk][0].pk]
        assert readings[0]["value"] == 2.0
        assert readings[0]["time"] == (start + timedelta(seconds=1)).isoformat()


def test_batch_without_live_change_sends_nothing(alpha):
    layer = get_channel_layer()
    sensor = SensorFactory()
    channel = async_to_sync(_join)(layer, unit_group("alpha", sensor.unit_id))

    push_readings("alpha", [Sample(sensor.pk, datetime(2026, 1, 1, tzinfo=UTC), 1.0, 0)], {sensor.pk + 1})

    assert async_to_sync(_receive_all)(layer, channel) == []
