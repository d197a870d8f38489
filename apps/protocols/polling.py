"""Polling of due devices in the current tenant schema.

One call polls every device that is due, concurrently on one asyncio event
loop, and hands all samples to telemetry ingest in one batch. A device that
does not answer is marked offline and polled again after an exponential
back-off; nothing a device does can raise out of ``poll_due_devices``.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Value
from django.utils import timezone

from apps.telemetry.ingest import ingest
from apps.telemetry.quality import Quality
from apps.telemetry.samples import Sample

from .choices import DeviceStatus
from .drivers.base import DeviceUnreachable, get_driver
from .models import Device, Point

logger = logging.getLogger(__name__)

# Devices polled at once per task; more would only queue inside the event loop.
MAX_CONCURRENT_POLLS = 200


@dataclass
class PollOutcome:
    device: Device
    samples: list = field(default_factory=list)
    error: str = ""
    unreachable: bool = False
    duration_ms: float = 0.0


@dataclass
class PollSummary:
    polled: int = 0
    failed: int = 0
    samples: int = 0


def claim_due_devices(now=None):
    """Lock the due devices, move their next poll one interval ahead and return them.

    SKIP LOCKED lets two workers run this at once without polling a device twice.
    """
    now = now or timezone.now()
    with transaction.atomic():
        due_ids = list(
            Device.objects.due(now).select_for_update(skip_locked=True).values_list("id", flat=True)
        )
        if not due_ids:
            return []
        Device.objects.filter(id__in=due_ids).update(
            next_poll_at=ExpressionWrapper(
                Value(now) + F("poll_interval") * Value(timedelta(seconds=1)), output_field=DateTimeField()
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


def poll_due_devices(now=None):
    """Poll the due devices of the current schema, store their samples and update their status."""
    schema = connection.schema_name
    devices = claim_due_devices(now)
    summary = PollSummary()
    if not devices:
        return summary

    outcomes = asyncio.run(_poll_all(devices))

    samples = []
    for outcome in outcomes:
        samples.extend(outcome.samples)
        summary.polled += 1
        summary.failed += bool(outcome.error)
    if samples:
        result = ingest(schema, samples)
        summary.samples = result.accepted
        for rejection in result.rejected:
            logger.warning("Schema %s: poll sample of sensor %s rejected: %s", schema, rejection.sensor_id, rejection.reason)
    for outcome in outcomes:
        _record_status(outcome)
    return summary


async def _poll_all(devices):
    limit = asyncio.Semaphore(MAX_CONCURRENT_POLLS)

    async def poll_with_limit(device):
        async with limit:
            return await poll_device(device)

    return await asyncio.gather(*(poll_with_limit(device) for device in devices))


async def poll_device(device):
    """Read all enabled points of ``device``; errors end up in the outcome, never raised."""
    outcome = PollOutcome(device)
    started = time.perf_counter()
    try:
        driver = get_driver(device.protocol)(device)
        async with driver:
            outcome.samples = await driver.read(device.enabled_points)
    except DeviceUnreachable as exc:
        outcome.error = str(exc)
        outcome.unreachable = True
    except Exception as exc:
        # A decoding bug or odd reply must cost this device's poll only.
        logger.exception("Polling device %s (id %s) failed", device.name, device.id)
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.duration_ms = (time.perf_counter() - started) * 1000
    return outcome


def _record_status(outcome):
    device = outcome.device
    now = timezone.now()
    if not outcome.error:
        if device.status != DeviceStatus.ONLINE:
            logger.info("Device %s (id %s) is online", device.name, device.id)
        Device.objects.filter(pk=device.pk).update(
            status=DeviceStatus.ONLINE,
            last_seen=now,
            last_error="",
            last_poll_duration_ms=outcome.duration_ms,
            consecutive_failures=0,
        )
        return

    failures = device.consecutive_failures + 1
    backoff = min(device.poll_interval * 2 ** min(failures, 16), settings.PROTOCOLS_MAX_BACKOFF_SECONDS)
    status = DeviceStatus.OFFLINE if outcome.unreachable else DeviceStatus.ERROR
    logger.warning(
        "Device %s (id %s) poll failed (%d in a row, next try in %.0f s): %s",
        device.name, device.id, failures, backoff, outcome.error,
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


def _store_comm_lost(device, now):
    """Record one bad-quality sample per point when a device goes away, so its values show as lost."""
    samples = [Sample(point.sensor_id, now, None, Quality.BAD_COMM_LOST) for point in device.enabled_points]
    if samples:
        ingest(connection.schema_name, samples)
