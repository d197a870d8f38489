"""Push of new live values to the WebSocket clients watching a unit."""

import asyncio
import concurrent.futures
import logging
import os
import threading

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django_tenants.utils import schema_context

from apps.sensors.models import Sensor
from apps.telemetry import latest
from apps.telemetry.live_sequence import reserve_group_seqs

from .groups import unit_group

logger = logging.getLogger(__name__)

# Maximum group sends in flight at once. Each uses one Redis connection of the channel layer.
MAX_CONCURRENT_SENDS = 32
# Seconds push_readings waits for one batch of sends before it cancels them and logs an error.
SEND_TIMEOUT_SECONDS = 10.0


def push_readings(schema, samples, live_sensor_ids):
    """Send each changed live value once to the group of its unit.

    Only the newest sample per sensor is sent, and only for sensors whose
    live value changed, so a backlog of late readings sends nothing. All
    units of one call are sent in one event-loop run.
    """
    if not live_sensor_ids:
        return
    newest = {}
    for sample in samples:
        if sample.sensor_id in live_sensor_ids:
            current = newest.get(sample.sensor_id)
            if current is None or sample.time > current.time:
                newest[sample.sensor_id] = sample
    if not newest:
        return
    with schema_context(schema):
        unit_of = _units_of(list(newest))

    by_unit = {}
    for sensor_id, sample in newest.items():
        unit_id = unit_of.get(sensor_id)
        if unit_id is None:
            continue
        by_unit.setdefault(unit_id, []).append(
            {
                "sensor": sensor_id,
                "time": sample.time.isoformat(),
                "value": sample.value,
                "quality": int(sample.quality),
            }
        )
    if not by_unit:
        return
    messages = [
        (unit_group(schema, unit_id), {"type": "readings.update", "readings": readings})
        for unit_id, readings in by_unit.items()
    ]
    _number_messages(schema, messages)
    future = asyncio.run_coroutine_threadsafe(_send_all(get_channel_layer(), messages), _running_send_loop().loop)
    try:
        failures = future.result(timeout=SEND_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        future.cancel()
        logger.error(
            "Schema %s: live push to %d units timed out after %g s; their clients get the next change",
            schema, len(messages), SEND_TIMEOUT_SECONDS,
        )
        return
    for (group, _message), error in zip(messages, failures):
        if error is not None:
            logger.error("Schema %s: live push to group %s failed: %r", schema, group, error)
    logger.debug("Schema %s: pushed %d live values to %d units", schema, len(newest), len(by_unit))


def _number_messages(schema, messages):
    """Add ``group`` and the next ``group_seq`` of that group to each message, reserving all in one round trip."""
    try:
        seqs = reserve_group_seqs(schema, {group: 1 for group, _message in messages})
    except Exception:
        # Unnumbered messages still reach the clients, but a consumer cannot tell when one of them is lost.
        logger.exception("Schema %s: reserving group sequence numbers for %d units failed; sending them unnumbered",
                         schema, len(messages))
        return
    for group, message in messages:
        message.update(group=group, group_seq=seqs[group])


def _units_of(sensor_ids):
    """Return {sensor id: unit id}. The ids go as one array literal, as in ``telemetry.ingest._sensor_ranges``."""
    table = connection.ops.quote_name(Sensor._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, unit_id FROM {table} WHERE id = ANY(%s::bigint[])",
            ["{" + ",".join(str(int(sensor_id)) for sensor_id in sensor_ids) + "}"],
        )
        return dict(cursor.fetchall())


async def _send_all(layer, messages):
    """Send every (group, message) concurrently; return each send's exception, or None when it succeeded."""
    limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def send(group, message):
        async with limit:
            await layer.group_send(group, message)

    results = await asyncio.gather(*(send(group, message) for group, message in messages), return_exceptions=True)
    return [result if isinstance(result, BaseException) else None for result in results]


class _SendLoop:
    """An event loop on a daemon thread of its own, where the channel layer keeps its Redis connections.

    ``async_to_sync`` from a thread without a loop starts a new loop per call,
    and the channel layer then opens new connections for every batch.
    """

    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-push", daemon=True)
        self.thread.start()
        logger.info("Started the live push loop in process %d", self.pid)


_send_loop = None
_send_loop_lock = threading.Lock()


def _running_send_loop():
    """Return this process's send loop, starting it on first use and again in a forked child."""
    global _send_loop
    with _send_loop_lock:
        if _send_loop is None or _send_loop.pid != os.getpid() or not _send_loop.thread.is_alive():
            _send_loop = _SendLoop()
        return _send_loop


def dropped_messages_key(schema):
    return f"thermacore:{schema}:live:dropped"


async def count_dropped_messages(schema, count):
    """Add ``count`` to the tenant's total of live messages that clients did not get (a Redis counter).

    It counts the messages dropped for stalled clients and the gaps in ``group_seq`` that consumers found.
    """
    await sync_to_async(latest.get_client().incrby, thread_sensitive=False)(dropped_messages_key(schema), count)


def dropped_messages(schema):
    """Return how many live messages the tenant's clients did not get so far (see count_dropped_messages)."""
    return int(latest.get_client().get(dropped_messages_key(schema)) or 0)
