"""Polling of due devices in the current tenant schema.

One call polls every device that is due, concurrently on the worker process's
long-lived poll loop (apps.protocols.modbus.pool), where Modbus TCP connections
stay open from one poll to the next. It stores each device's samples as soon as its
poll ends, so a slow device never holds back the others. Each poll has a
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
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.db.models.functions import Least
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
    """Lock the due devices, lease them for the length of a poll and return them.

    ``candidates`` is a Device queryset to claim from instead of ``Device.objects.due``,
    such as the due devices of a poll group (apps.protocols.schedules).

    The lease moves ``next_poll_at`` past the end of the poll's time budget,
    so no other worker claims a device while it is still being polled. The
    finished poll sets the real next poll time. SKIP LOCKED lets two workers
    claim at the same moment without waiting for each other.
    """
    now = now or timezone.now()
    second = Value(timedelta(seconds=1))
    with transaction.atomic():
        candidates = Device.objects.due(now) if candidates is None else candidates
        due_ids = list(candidates.select_for_update(skip_locked=True).values_list("id", flat=True))
        if not due_ids:
            return []
        Device.objects.filter(id__in=due_ids).update(
            next_poll_at=ExpressionWrapper(
                Value(now)
                + (F("poll_interval") + Least(F("timeout") * REQUESTS_PER_BUDGET, Value(MAX_POLL_SECONDS))) * second,
                output_field=DateTimeField(),
            )
        )
    devices = list(Device.objects.filter(id__in=due_ids))
    points = Point.objects.filter(device_id__in=due_ids, enabled=True).order_by("address")
    by_device = {device.id: device for device in devices}
    for device in devices:
        device.enabled_points = []
    for point in points:
        by_device[point.device_id].enabled_points.append(point)
    return devices


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
        # Store whatever has arrived in one ingest call, then wait for more.
        ready = [outcomes.get()]
        while True:
            try:
                ready.append(outcomes.get_nowait())
            except queue.Empty:
                break
        finished = ready[-1] is None
        _store_outcomes(schema, [outcome for outcome in ready if outcome is not None], claimed_at, summary)
    return summary


def _end_of_polls(future, device_count, outcomes):
    if not future.cancelled() and future.exception() is not None:
        logger.error("Poll loop failed for %d devices", device_count, exc_info=future.exception())
    # None marks the end, so the storing side stops waiting for outcomes.
    outcomes.put(None)


def _store_outcomes(schema, outcomes, claimed_at, summary):
    samples = []
    for outcome in outcomes:
        samples.extend(outcome.samples)
        summary.polled += 1
        summary.failed += bool(outcome.error)
    if samples:
        result = deliver_samples(schema, samples)
        summary.samples += result.accepted
        for rejection in result.rejected:
            logger.warning("Schema %s: poll sample of sensor %s rejected: %s", schema, rejection.sensor_id, rejection.reason)
    for outcome in outcomes:
        _record_status(outcome, claimed_at)
        if not outcome.error:
            _record_point_errors(outcome)


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


def _record_status(outcome, claimed_at):
    device = outcome.device
    schema = connection.schema_name
    now = timezone.now()
    if not outcome.error:
        if device.status != DeviceStatus.ONLINE:
            logger.info("Schema %s: device %s (id %s) is online", schema, device.name, device.id)
        # Keep the cadence from the claim; a poll that overran its interval is due at once.
        next_poll_at = max(claimed_at + timedelta(seconds=device.poll_interval), now)
        Device.objects.filter(pk=device.pk).update(
            status=DeviceStatus.ONLINE,
            last_seen=now,
            last_error="",
            last_poll_duration_ms=outcome.duration_ms,
            consecutive_failures=0,
            next_poll_at=next_poll_at,
        )
        return

    failures = device.consecutive_failures + 1
    backoff = min(device.poll_interval * 2 ** min(failures, 16), settings.PROTOCOLS_MAX_BACKOFF_SECONDS)
    status = DeviceStatus.OFFLINE if outcome.unreachable else DeviceStatus.ERROR
    logger.warning(
        "Schema %s: device %s (id %s) poll failed (%d in a row, next try in %.0f s): %s",
        schema, device.name, device.id, failures, backoff, outcome.error,
    )
    if device.status != status:
        _store_comm_lost(device, now)
    Device.objects.filter(pk=device.pk).update(
        status=status,
        last_error=outcome.error[:2000],
        last_poll_duration_ms=outcome.duration_ms,
        consecutive_failures=failures,
        error_count=F("error_count") + 1,
        next_poll_at=now + timedelta(seconds=backoff),
    )


def _record_point_errors(outcome):
    """Store why points read bad, and clear the reason of points that read good again."""
    for point_id, message in outcome.point_errors.items():
        Point.objects.filter(pk=point_id).exclude(last_error=message).update(last_error=message[:2000])
    Point.objects.filter(device_id=outcome.device.pk).exclude(pk__in=list(outcome.point_errors)).exclude(
        last_error=""
    ).update(last_error="")


def _store_comm_lost(device, now):
    """Record one bad-quality sample per point when a device goes away, so its values show as lost."""
    samples = [Sample(point.sensor_id, now, None, Quality.BAD_COMM_LOST) for point in device.enabled_points]
    if samples:
        deliver_samples(connection.schema_name, samples)
