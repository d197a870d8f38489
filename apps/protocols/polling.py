"""Polling of due devices in the current tenant schema.

One call polls every device that is due, concurrently on the worker process's
long-lived poll loop (apps.protocols.modbus.pool), where Modbus TCP connections
stay open from one poll to the next. The devices that finish within
STORE_DELAY_SECONDS of each other are stored together: one ingest call, one
UPDATE for their status and at most one for their point errors. A slow device
therefore holds back the others by STORE_DELAY_SECONDS at most. Each poll has a
time budget. A device that does not respond within it is marked offline and
polled again after an exponential back-off. Nothing a device does can raise
out of ``poll_due_devices``.
"""

import asyncio
import logging
import queue
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample

from .choices import DeviceStatus, Protocol
from .drivers.base import DeviceUnreachable, get_driver
from .modbus.pool import ConnectFailed, run_on_poll_loop
from .models import Device, Point
from .sinks import deliver_samples

logger = logging.getLogger(__name__)

# Devices polled at once per task; more would only queue inside the event loop.
MAX_CONCURRENT_POLLS = 200
# Maximum seconds one device's poll may take. It stays below the poll task's
# soft time limit (30 s), so a hung device cannot stop the task.
MAX_POLL_SECONDS = 20.0
# Requests of one poll that may each take a full timeout before the budget ends.
REQUESTS_PER_BUDGET = 4
# Seconds the storing side waits for further outcomes after the first, so
# that devices finishing close together share one ingest call and one UPDATE.
STORE_DELAY_SECONDS = 0.25


def poll_budget(device):
    """Return the seconds the poll of ``device`` may take before it counts as failed."""
    return min(device.timeout * REQUESTS_PER_BUDGET, MAX_POLL_SECONDS)


@dataclass
class PollOutcome:
    device: Device
    samples: list = field(default_factory=list)
    point_errors: dict = field(default_factory=dict)
    error: str = ""
    unreachable: bool = False
    duration_ms: float = 0.0


@dataclass
class PollSummary:
    polled: int = 0
    failed: int = 0
    samples: int = 0


def claim_due_devices(now=None, candidates=None):
    """Lease the due devices for the length of a poll and return them with their enabled points.

    ``candidates`` is a Device queryset to claim from instead of ``Device.objects.due``,
    such as the due devices of a poll group (apps.protocols.schedules).

    The lease moves ``next_poll_at`` past the end of the poll's time budget,
    so no other worker claims a device while it is still being polled. The
    finished poll sets the real next poll time. One UPDATE ... RETURNING locks,
    leases and reads the devices, and SKIP LOCKED lets two workers claim at
    the same moment without waiting for each other.
    """
    now = now or timezone.now()
    candidates = Device.objects.due(now) if candidates is None else candidates
    table = connection.ops.quote_name(Device._meta.db_table)
    with transaction.atomic():
        # Compiled inside the transaction, because Django rejects FOR UPDATE in autocommit.
        locked_sql, locked_params = (
            candidates.order_by().select_for_update(skip_locked=True).values("pk").query.sql_with_params()
        )
        devices = list(
            Device.objects.raw(
                f"UPDATE {table} SET next_poll_at = %s + (poll_interval + LEAST(timeout * %s, %s))"
                f" * interval '1 second' WHERE id IN ({locked_sql}) RETURNING *",
                [now, REQUESTS_PER_BUDGET, MAX_POLL_SECONDS, *locked_params],
            )
        )
    devices.sort(key=lambda device: device.pk)
    if devices:
        _attach_points(devices)
    return devices


# Points per (schema, device id): (row versions of its points, [Point]). Kept
# across polls, because building each Point anew cost about 30 µs of CPU, or
# 1.5 ms per poll of a device with 50 points (bench/modbus_scaling.py profile).
_point_cache = {}


def _attach_points(devices):
    """Set ``enabled_points`` (by address) and ``stored_point_errors`` on each device.

    A device's points are read again only when the row versions of its points
    (xmin and ctid of each row, hashed per device) differ from those of the
    cached copy. Every INSERT, UPDATE and DELETE changes them, even within one
    transaction, because an updated row gets a new ctid.
    """
    schema = connection.schema_name
    table = connection.ops.quote_name(Point._meta.db_table)
    device_ids = "{" + ",".join(str(device.pk) for device in devices) + "}"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT device_id, md5(string_agg(id::text || ':' || xmin::text || ctid::text, ',' ORDER BY id))"
            f" FROM {table} WHERE device_id = ANY(%s::bigint[]) GROUP BY device_id",
            [device_ids],
        )
        versions = dict(cursor.fetchall())

    stale = [
        device.pk for device in devices
        if (schema, device.pk) not in _point_cache or _point_cache[(schema, device.pk)][0] != versions.get(device.pk)
    ]
    if stale:
        fresh = {device_id: [] for device_id in stale}
        for point in Point.objects.raw(
            f"SELECT * FROM {table} WHERE device_id = ANY(%s::bigint[])",
            ["{" + ",".join(str(device_id) for device_id in stale) + "}"],
        ):
            fresh[point.device_id].append(point)
        for device_id, points in fresh.items():
            # A point edited after the versions query gets read again at the next poll.
            _point_cache[(schema, device_id)] = (versions.get(device_id), points)

    for device in devices:
        points = _point_cache[(schema, device.pk)][1]
        # Same order as ORDER BY address, which puts points without an address last.
        device.enabled_points = sorted(
            (point for point in points if point.enabled),
            key=lambda point: (point.address is None, point.address or 0),
        )
        device.stored_point_errors = {point.pk: point.last_error for point in points if point.last_error}


def poll_due_devices(now=None, candidates=None):
    """Poll the due devices of the current schema, store their samples and update their status."""
    schema = connection.schema_name
    claimed_at = now or timezone.now()
    devices = claim_due_devices(claimed_at, candidates)
    summary = PollSummary()
    if not devices:
        return summary

    outcomes = queue.SimpleQueue()
    polls = run_on_poll_loop(_poll_all, schema, devices, outcomes.put)
    polls.add_done_callback(lambda future: _end_of_polls(future, len(devices), outcomes))
    finished = False
    while not finished:
        ready = _collect_outcomes(outcomes)
        finished = ready[-1] is None
        _store_outcomes(schema, [outcome for outcome in ready if outcome is not None], claimed_at, summary)
    return summary


def _collect_outcomes(outcomes):
    """Wait for the next outcome, then gather those that follow within STORE_DELAY_SECONDS.

    The list ends with None once every poll has reported.
    """
    ready = [outcomes.get()]
    store_at = time.monotonic() + STORE_DELAY_SECONDS
    while ready[-1] is not None:
        try:
            ready.append(outcomes.get(timeout=max(0.0, store_at - time.monotonic())))
        except queue.Empty:
            break
    return ready


def _end_of_polls(future, device_count, outcomes):
    if not future.cancelled() and future.exception() is not None:
        logger.error("Poll loop failed for %d devices", device_count, exc_info=future.exception())
    # None marks the end, so the storing side stops waiting for outcomes.
    outcomes.put(None)


def _store_outcomes(schema, outcomes, claimed_at, summary):
    """Store the samples of ``outcomes`` in one ingest call, then their device status and point errors."""
    now = timezone.now()
    samples = []
    for outcome in outcomes:
        samples.extend(outcome.samples)
        summary.polled += 1
        summary.failed += bool(outcome.error)
    statuses = [_new_status(outcome, claimed_at, now) for outcome in outcomes]
    for outcome, status in zip(outcomes, statuses):
        if outcome.error and outcome.device.status != status["status"]:
            samples.extend(_comm_lost_samples(outcome.device, now))
    if samples:
        result = deliver_samples(schema, samples)
        summary.samples += result.accepted
        for rejection in result.rejected:
            logger.warning("Schema %s: poll sample of sensor %s rejected: %s", schema, rejection.sensor_id, rejection.reason)
    _write_statuses(statuses)
    _write_point_errors([outcome for outcome in outcomes if not outcome.error])


async def _poll_all(pool, schema, devices, report):
    limit = asyncio.Semaphore(MAX_CONCURRENT_POLLS)

    async def poll_with_limit(device):
        async with limit:
            report(await poll_device(device, pool=pool, schema=schema))

    await asyncio.gather(*(poll_with_limit(device) for device in devices))


async def poll_device(device, *, pool=None, schema=""):
    """Read all enabled points of ``device``; errors end up in the outcome, never raised.

    With a ``pool``, a Modbus TCP device is read over its pooled connection; without, over
    a connection of this poll alone.
    """
    outcome = PollOutcome(device)
    started = time.perf_counter()
    budget = poll_budget(device)
    try:
        async with asyncio.timeout(budget):
            if pool is not None and device.protocol == Protocol.MODBUS_TCP:
                await _read_pooled(pool, schema, device, outcome)
            else:
                async with get_driver(device.protocol)(device) as driver:
                    outcome.samples = await driver.read(device.enabled_points)
                    outcome.point_errors = driver.point_errors
    except TimeoutError:
        outcome.error = f"Poll of {device.host}:{device.port} did not finish within {budget:g} s."
        outcome.unreachable = True
    except DeviceUnreachable as exc:
        outcome.error = str(exc)
        outcome.unreachable = True
    except Exception as exc:
        # A decoding bug or odd reply must cost this device's poll only.
        logger.exception("Polling device %s (id %s) failed", device.name, device.id)
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.duration_ms = (time.perf_counter() - started) * 1000
    return outcome


async def _read_pooled(pool, schema, device, outcome):
    """Read ``device`` over its pooled connection, reconnecting once when a reused connection went stale."""
    for attempt in (1, 2):
        try:
            async with pool.lease(schema, device) as connection:
                reused = connection.reused
                driver = get_driver(device.protocol)(device, client=connection.client)
                try:
                    outcome.samples = await driver.read(device.enabled_points)
                except DeviceUnreachable as exc:
                    # A device that restarted or dropped an idle connection fails the first request.
                    if not reused or attempt == 2:
                        raise
                    logger.info(
                        "Schema %s device %s: pooled connection failed (%s); reconnecting once", schema, device.pk, exc
                    )
                    pool.discard(schema, device, str(exc))
                    continue
                outcome.point_errors = driver.point_errors
                return
        except ConnectFailed as exc:
            raise DeviceUnreachable(str(exc)) from exc


def _new_status(outcome, claimed_at, now):
    """Return the status columns that ``outcome`` leaves its device with, and log a change."""
    device = outcome.device
    schema = connection.schema_name
    if not outcome.error:
        if device.status != DeviceStatus.ONLINE:
            logger.info("Schema %s: device %s (id %s) is online", schema, device.name, device.id)
        return {
            "id": device.pk,
            "status": DeviceStatus.ONLINE,
            "last_seen": now,
            "last_error": "",
            "last_poll_duration_ms": outcome.duration_ms,
            "consecutive_failures": 0,
            "failed": 0,
            # Keep the cadence from the claim; a poll that overran its interval is due at once.
            "next_poll_at": max(claimed_at + timedelta(seconds=device.poll_interval), now),
        }

    failures = device.consecutive_failures + 1
    backoff = min(device.poll_interval * 2 ** min(failures, 16), settings.PROTOCOLS_MAX_BACKOFF_SECONDS)
    status = DeviceStatus.OFFLINE if outcome.unreachable else DeviceStatus.ERROR
    logger.warning(
        "Schema %s: device %s (id %s) poll failed (%d in a row, next try in %.0f s): %s",
        schema, device.name, device.id, failures, backoff, outcome.error,
    )
    return {
        "id": device.pk,
        "status": status,
        "last_seen": None,
        "last_error": outcome.error[:2000],
        "last_poll_duration_ms": outcome.duration_ms,
        "consecutive_failures": failures,
        "failed": 1,
        "next_poll_at": now + timedelta(seconds=backoff),
    }


def _write_statuses(statuses):
    """Write the status of every polled device in one UPDATE; a failed poll keeps ``last_seen``."""
    if not statuses:
        return
    table = connection.ops.quote_name(Device._meta.db_table)
    columns = {name: [status[name] for status in statuses] for name in statuses[0]}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS device SET
                status = new.status,
                last_seen = COALESCE(new.last_seen, device.last_seen),
                last_error = new.last_error,
                last_poll_duration_ms = new.last_poll_duration_ms,
                consecutive_failures = new.consecutive_failures,
                error_count = device.error_count + new.failed,
                next_poll_at = new.next_poll_at
            FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::text[], %s::float8[], %s::int[],
                        %s::int[], %s::timestamptz[])
                AS new(id, status, last_seen, last_error, last_poll_duration_ms, consecutive_failures,
                       failed, next_poll_at)
            WHERE device.id = new.id
            """,
            [
                columns["id"], [str(status) for status in columns["status"]], columns["last_seen"],
                columns["last_error"], columns["last_poll_duration_ms"], columns["consecutive_failures"],
                columns["failed"], columns["next_poll_at"],
            ],
        )


def _write_point_errors(outcomes):
    """Store why points read bad and clear the reason of points that read good again, in one UPDATE.

    The errors stored at claim time (``stored_point_errors``) are compared in
    Python, so a poll that changes no point error writes nothing.
    """
    point_ids = []
    messages = []
    for outcome in outcomes:
        stored = outcome.device.stored_point_errors
        current = {point_id: message[:2000] for point_id, message in outcome.point_errors.items()}
        for point_id, message in current.items():
            if stored.get(point_id, "") != message:
                point_ids.append(point_id)
                messages.append(message)
        for point_id in stored.keys() - current.keys():
            point_ids.append(point_id)
            messages.append("")
    if not point_ids:
        return
    table = connection.ops.quote_name(Point._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS point SET last_error = new.last_error
            FROM unnest(%s::bigint[], %s::text[]) AS new(id, last_error)
            WHERE point.id = new.id AND point.last_error <> new.last_error
            """,
            [point_ids, messages],
        )


def _comm_lost_samples(device, now):
    """Return one bad-quality sample per point of a device that went away, so its values show as lost."""
    return [Sample(point.sensor_id, now, None, Quality.BAD_COMM_LOST) for point in device.enabled_points]
