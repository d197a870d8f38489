"""The gateway process: long-lived subscription connections (MQTT, OPC UA, DNP3) of every tenant.

```
Gateway.run
 ├─ SupervisedConnection (schema alpha, device 3) ─ driver.run ─ reconnect with back-off
 ├─ SupervisedConnection (schema beta, device 1)  ─ driver.run ─ …
 ├─ CommandServer: advertises the held DNP3 devices in Redis and runs setpoint
 │  requests on their drivers (apps.protocols.gateway_commands)
 └─ every tick: flush samples to ingest, per schema
    every heartbeat: device status and last_seen
    every reload: start, stop or restart connections whose configuration changed
    (at the next tick when a setpoint request carried newer connection settings)
```
Each connection runs in a task of its own, so a failing device only delays itself.
Database work goes through ``sync_to_async(thread_sensitive=True)``. Run the gateway
with ``async_to_sync(gateway.run)()`` from the main thread (as ``run_gateway`` does), and
that work happens on the main thread, one call at a time.
"""

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import F
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, get_tenant_model, schema_context

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.tenants.choices import TenantStatus
from thermacore.aio import cancel_and_wait

from .choices import DeviceStatus
from .drivers.base import DeviceUnreachable, get_driver
from .gateway_commands import CommandServer
from .models import Device, Point
from .sinks import deliver_samples

logger = logging.getLogger(__name__)

# Seconds a stopping connection gets to close its session before it is cancelled again. Closing
# an OPC UA session whose server is gone waits for the request timeout.
CLOSE_GRACE_SECONDS = 10.0

# Fields whose change restarts a connection when the gateway reloads the configuration.
DEVICE_CONNECTION_FIELDS = (
    "protocol", "host", "port", "timeout", "endpoint_path", "username", "password", "client_id", "qos",
    "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify_hostname", "dnp3_master_address", "dnp3_outstation_address",
    "integrity_interval", "event_poll_interval", "time_sync", "opcua_security_mode", "opcua_security_policy",
    "client_certificate_id",
)
POINT_CONNECTION_FIELDS = (
    "sensor_id", "topic", "json_path", "timestamp_path", "sparkplug_metric", "node_id", "sampling_interval_ms", "deadband",
    "dnp3_type", "dnp3_index", "scale", "offset",
)


def db(function):
    """Wrap a synchronous database function for the gateway's event loop."""
    return sync_to_async(function, thread_sensitive=True)


@dataclass(frozen=True)
class ConnectionSpec:
    """Settings of one connection: its tenant schema, its device and the device's enabled points."""

    schema: str
    device: Device = field(compare=False)
    points: tuple = field(compare=False)
    fingerprint: tuple

    @property
    def key(self):
        return (self.schema, self.device.pk)


def connection_settings(device):
    """Return the device's connection fields and the ids of its trusted certificates, whose change restarts a connection.

    Setpoint requests carry a digest of these (apps.protocols.gateway_commands.connection_digest).
    Values go through their model field's ``to_python``, so an unsaved 1 and a loaded 1.0 compare equal.
    """
    values = tuple(Device._meta.get_field(name).to_python(getattr(device, name)) for name in DEVICE_CONNECTION_FIELDS)
    return values, tuple(sorted(certificate.pk for certificate in device.trusted_certificates.all()))


def load_specs():
    """Return a ConnectionSpec per enabled subscription device of every active tenant, keyed by (schema, device id).

    Suspended tenants and tenants still being provisioned get no connections.
    """
    schemas = (
        get_tenant_model().objects.active().exclude(schema_name=get_public_schema_name())
        .values_list("schema_name", flat=True)
    )
    specs = {}
    for schema in schemas:
        with schema_context(schema):
            devices = list(Device.objects.subscribed().with_certificates())
            points = defaultdict(list)
            for point in Point.objects.filter(device__in=devices, enabled=True).order_by("pk"):
                points[point.device_id].append(point)
        for device in devices:
            device_points = tuple(points[device.pk])
            fingerprint = (
                *connection_settings(device),
                tuple((point.pk, *(getattr(point, name) for name in POINT_CONNECTION_FIELDS)) for point in device_points),
            )
            spec = ConnectionSpec(schema, device, device_points, fingerprint)
            specs[spec.key] = spec
    return specs


class SupervisedConnection:
    """One device's connection, restarted with exponential back-off whenever it fails."""

    def __init__(self, gateway, spec):
        self.gateway = gateway
        self.spec = spec
        self.driver = None
        self.failures = 0
        self.comm_lost_recorded = False
        self.counted_driver = None
        self.reported_malformed = 0
        self.task = None
        # Setpoint requests routed to the gateway run on this connection's driver one at a time.
        self.command_lock = asyncio.Lock()

    def start(self):
        self.task = asyncio.create_task(self.run(), name=f"gateway-{self.spec.schema}-{self.spec.device.pk}")

    async def stop(self):
        if self.task is None:
            return
        owner = f"Schema {self.spec.schema} device {self.spec.device.pk}"
        await cancel_and_wait([self.task], owner, recancel_seconds=CLOSE_GRACE_SECONDS)

    async def run(self):
        spec = self.spec
        device = spec.device
        while True:
            self.driver = get_driver(device.protocol)(device, schema=spec.schema)
            logger.info(
                "Schema %s device %s: starting %s connection to %s:%s with %d points",
                spec.schema, device.pk, device.protocol, device.host, device.port, len(spec.points),
            )
            try:
                await self.driver.run(spec.points, self._deliver)
                error = "the driver stopped without an error"
            except DeviceUnreachable as exc:
                error = str(exc)
            except asyncio.CancelledError:
                logger.info("Schema %s device %s: stopping connection", spec.schema, device.pk)
                raise
            except Exception as exc:
                # A driver bug must cost this device its connection only, never the gateway.
                logger.exception("Schema %s device %s: connection failed", spec.schema, device.pk)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                await self.driver.close()

            if self.driver.was_connected:
                self.failures = 0
            self.failures += 1
            delay = self.gateway.backoff(self.failures)
            logger.warning(
                "Schema %s device %s: connection failed (%d in a row), retrying in %.1f s: %s",
                spec.schema, device.pk, self.failures, delay, error,
            )
            await db(self._record_failure)(error)
            await asyncio.sleep(delay)

    def _deliver(self, samples):
        self.gateway.deliver(self.spec.schema, samples)

    def _record_failure(self, error):
        spec = self.spec
        now = timezone.now()
        with schema_context(spec.schema):
            Device.objects.filter(pk=spec.device.pk).update(
                status=DeviceStatus.OFFLINE,
                last_error=error[:2000],
                consecutive_failures=self.failures,
                error_count=F("error_count") + 1,
            )
        if not self.comm_lost_recorded and spec.points:
            # One bad sample per point marks the values as lost until the connection is back.
            deliver_samples(spec.schema, [Sample(point.sensor_id, now, None, Quality.BAD_COMM_LOST) for point in spec.points])
            self.comm_lost_recorded = True


class Gateway:
    """Runs the subscription connections of all tenants until ``request_stop`` is called."""

    def __init__(self, *, tick=0.5, heartbeat_interval=10.0, reload_interval=30.0, min_backoff=1.0,
                 max_backoff=None):
        self.tick = tick
        self.heartbeat_interval = heartbeat_interval
        self.reload_interval = reload_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff if max_backoff is not None else settings.PROTOCOLS_MAX_BACKOFF_SECONDS
        self.connections = {}
        self.suspended = set()
        self._pending = defaultdict(list)
        self._loop = None
        self._stop = None
        self._stop_requested = False
        self._reload_requested = False
        self.commands = CommandServer(self)

    def backoff(self, failures):
        """Return the seconds to wait after ``failures`` failures in a row: doubling, capped at max_backoff."""
        return min(self.min_backoff * 2 ** min(failures - 1, 30), self.max_backoff)

    def request_stop(self):
        """Ask the running gateway to stop; safe to call from a signal handler or another thread."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def request_reload(self):
        """Reload the configuration at the next tick instead of at the next reload interval; call it on the gateway's loop."""
        self._reload_requested = True

    def deliver(self, schema, samples):
        self._pending[schema].extend(samples)

    async def run(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        logger.info("Gateway %s started", self.commands.gateway_id)
        # Tasks of their own, so that neither database calls nor a slow outstation hold up requests or advertisements.
        self.commands.start()
        next_heartbeat = next_reload = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_reload or self._reload_requested:
                    self._reload_requested = False
                    await self._guarded(self.reload, "Reloading the device configuration")
                    next_reload = now + self.reload_interval
                await self.flush()
                if now >= next_heartbeat:
                    await self._guarded(self.heartbeat, "Storing the heartbeat")
                    next_heartbeat = now + self.heartbeat_interval
                try:
                    async with asyncio.timeout(self.tick):
                        await self._stop.wait()
                except TimeoutError:
                    pass
        finally:
            logger.info("Gateway %s stopping %d connections", self.commands.gateway_id, len(self.connections))
            # The advertisements go only after the connections closed, so no caller opens a second DNP3 master
            # beside this gateway's while it stops.
            await self.commands.stop_requests()
            await asyncio.gather(*(connection.stop() for connection in self.connections.values()))
            self.connections.clear()
            await self.commands.close()
            await self.flush()
            logger.info("Gateway %s stopped", self.commands.gateway_id)

    async def _guarded(self, step, description):
        # A database outage must not end the connections, which keep buffering samples.
        try:
            await step()
        except Exception:
            logger.exception("%s failed; trying again at the next interval", description)

    async def reload(self):
        """Start new connections, stop removed ones and restart those whose configuration changed.

        The connections of a tenant that was suspended stop here, and start again at the first reload after it resumed.
        """
        specs = await db(load_specs)()
        suspended = await db(suspended_schemas)()
        for schema in sorted(suspended - self.suspended):
            count = sum(1 for key in self.connections if key[0] == schema)
            logger.info("Schema %s: tenant suspended, stopping its %d connections", schema, count)
        for schema in sorted(self.suspended - suspended):
            count = sum(1 for key in specs if key[0] == schema)
            logger.info("Schema %s: tenant resumed, starting its %d connections", schema, count)
        self.suspended = suspended
        for key, connection in list(self.connections.items()):
            spec = specs.get(key)
            if spec is None or spec.fingerprint != connection.spec.fingerprint:
                if key[0] in suspended:
                    reason = "tenant suspended"
                elif spec is None:
                    reason = "removed or disabled"
                else:
                    reason = "configuration changed"
                logger.info("Schema %s device %s: %s, stopping its connection", key[0], key[1], reason)
                await connection.stop()
                del self.connections[key]
        for key, spec in specs.items():
            if key not in self.connections:
                connection = SupervisedConnection(self, spec)
                self.connections[key] = connection
                connection.start()
        self.commands.request_advertisement()

    async def flush(self):
        """Hand the samples received since the last flush to ingest, one call per schema."""
        pending, self._pending = self._pending, defaultdict(list)
        for schema, samples in pending.items():
            try:
                result = await db(deliver_samples)(schema, samples)
            except Exception:
                logger.exception("Schema %s: storing %d gateway samples failed; they are lost", schema, len(samples))
                continue
            for rejection in result.rejected[:10]:
                logger.warning(
                    "Schema %s: gateway sample of sensor %s rejected: %s", schema, rejection.sensor_id, rejection.reason
                )

    async def heartbeat(self):
        """Mark connected devices online with a fresh last_seen, and add malformed-payload counts to error_count."""
        online = defaultdict(list)
        malformed = []
        for (schema, device_id), connection in self.connections.items():
            driver = connection.driver
            if driver is None:
                continue
            if driver.connected:
                online[schema].append(device_id)
                connection.comm_lost_recorded = False
            if connection.counted_driver is not driver:
                # Each reconnect makes a new driver, which counts from zero.
                connection.counted_driver = driver
                connection.reported_malformed = 0
            count = getattr(driver, "malformed_count", 0)
            if count > connection.reported_malformed:
                malformed.append((schema, device_id, count - connection.reported_malformed))
                connection.reported_malformed = count
        await db(_store_heartbeat)(dict(online), malformed)


def suspended_schemas():
    return set(get_tenant_model().objects.filter(status=TenantStatus.SUSPENDED).values_list("schema_name", flat=True))


def _store_heartbeat(online, malformed):
    now = timezone.now()
    for schema, device_ids in online.items():
        with schema_context(schema):
            Device.objects.filter(pk__in=device_ids).update(
                status=DeviceStatus.ONLINE, last_seen=now, last_error="", consecutive_failures=0
            )
    for schema, device_id, count in malformed:
        with schema_context(schema):
            Device.objects.filter(pk=device_id).update(error_count=F("error_count") + count)

