"""Setpoint writes routed to the gateway process, over Redis, so they reuse its DNP3 master.

Many DNP3 outstations accept one master connection only, so a setpoint write from the
web, API or Celery must not open a second one beside the gateway's master. The path:

```
caller (write_setpoint)                       gateway (run_gateway)
 GET  thermacore:<schema>:gateway-device:<id>  ← SET … EX ttl on every heartbeat, per held device
 RPUSH thermacore:gateway-commands:<gateway>   → BLPOP, one task per request
 BLPOP thermacore:gateway-replies:<request>    ← LPUSH + EXPIRE after write and read-back
```
The gateway runs the read, write and read-back of ``write_and_read_back`` on the driver of
the connection it holds, one request per device at a time. A request carries a digest of the
device's connection settings as the caller read them. The gateway rejects it as "stale" when its
own copy differs, so a re-pointed device is never commanded over the old connection. Without
an advertisement (no gateway runs, as in tests and one-off commands) the write opens a session
of its own, as Modbus and OPC UA writes do. Audit entries and the stored read-back stay in ``apps.protocols.services``.

Only DNP3 is routed. OPC UA servers accept several sessions, so a write session of its own
takes no slot from the gateway's, and its read-back is a fresh read rather than the
subscription's last value. MQTT points take no setpoints (MqttDriver.write rejects them).
"""

import asyncio
import copy
import json
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
import redis.asyncio
from django.conf import settings
from django.db import connection
from django.utils.crypto import salted_hmac

from apps.sensors.quality import is_bad
from apps.sensors.samples import Sample
from thermacore.aio import cancel_and_wait

from .choices import Protocol
from .drivers.base import DeviceUnreachable, UnconfirmedWrite, WriteRejected
from .sessions import make_driver, run_session

logger = logging.getLogger(__name__)

ROUTED_PROTOCOLS = {Protocol.DNP3}
# Point fields that decide the command, sent with each request. The gateway loaded its points at
# its last reload and does not restart a connection for a changed operate mode or control.
WRITE_FIELDS = (
    "data_type", "scale", "offset", "dnp3_operate_mode", "dnp3_control", "dnp3_on_time_ms", "dnp3_off_time_ms",
)
# Fields that must equal the gateway's copy of the point, so a request never reaches another output.
IDENTITY_FIELDS = ("sensor_id", "dnp3_type", "dnp3_index")
# Types a number in a reply decodes to. A JSON true or false decodes to a bool, which passes as an int.
NUMBER_TYPES = (int, float)
# Shortest lifetime of an advertisement, so a busy event loop cannot let it lapse between refreshes.
MIN_ADVERTISEMENT_SECONDS = 5.0
# Seconds a gateway waits on its command list per BLPOP, which bounds how long stopping takes.
LISTEN_SECONDS = 1.0
MAX_LISTEN_RETRY_SECONDS = 30.0
# Seconds a stopping gateway waits for the requests in progress before it cancels them.
STOP_WAIT_SECONDS = 10.0
# Seconds each Redis step of replying and stopping may take, so that a stalled Redis cannot hold up the stop.
REDIS_STOP_SECONDS = 3.0

# Deletes an advertisement only while it still names this gateway.
_DELETE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class NoGatewayReply(UnconfirmedWrite):
    """The gateway that holds the device's connection did not reply in time, so the write is unconfirmed."""


def advertisement_key(schema, device_id):
    # Tenant keys start with thermacore:<schema>: so they go when the tenant is deleted.
    return f"thermacore:{schema}:gateway-device:{device_id}"


def command_key(gateway_id):
    # A hyphen never occurs in a schema name, so these keys never match a tenant's key pattern.
    return f"thermacore:gateway-commands:{gateway_id}"


def reply_key(request_id):
    return f"thermacore:gateway-replies:{request_id}"


def connection_digest(device):
    """Return an HMAC of the device's connection settings, which a request carries and the gateway compares with its copy.

    Keyed with SECRET_KEY, because the settings include the device's password and requests sit in Redis.
    """
    # Imported here because apps.protocols.gateway imports this module.
    from .gateway import connection_settings

    payload = json.dumps(connection_settings(device), default=str)
    return salted_hmac("thermacore.gateway.connection-settings", payload, algorithm="sha256").hexdigest()


def reply_timeout(device):
    """Return the seconds a caller waits for the gateway: its read, write and read-back plus a margin."""
    # A read waits up to timeout and select before operate up to 2 × timeout + 1 (Dnp3Driver.write).
    return 4 * device.timeout + 1 + settings.PROTOCOLS_GATEWAY_REPLY_MARGIN_SECONDS


def _client():
    from apps.telemetry.latest import get_client

    return get_client()


async def write_and_read_back(driver, point, value):
    """Return the value before the write (None when unreadable), the value written and the read-back sample."""
    [before] = await driver.read([point])
    previous = None if before.value is None or is_bad(before.quality) else before.value
    written = await driver.write(point, value)
    [read_back] = await driver.read([point])
    return previous, written, read_back


# The caller's side


def gateway_holding(schema, device_id):
    """Return the id of the gateway that advertises the device's connection, or None when none does.

    Raise DeviceUnreachable when Redis cannot be reached, because a session of its own could then
    take the outstation's only master slot from a running gateway.
    """
    key = advertisement_key(schema, device_id)
    try:
        value = _client().get(key)
    except redis.RedisError as exc:
        raise DeviceUnreachable(
            f"Looking up the gateway of device {device_id} in Redis failed ({exc}). "
            "Check THERMACORE_REDIS_URL and that Redis runs, then write again."
        ) from exc
    if value is None:
        return None
    try:
        gateway_id = value.decode()
    except UnicodeDecodeError:
        gateway_id = None
    # Gateway ids are <host>-<pid>-<hex> (CommandServer), so they are printable and contain no spaces.
    if not gateway_id or not gateway_id.isprintable() or " " in gateway_id:
        raise DeviceUnreachable(
            f"The Redis key {key} contains {value[:80]!r}, which is not a gateway id, so the setpoint was sent to no "
            f"gateway and no device. Delete the key (redis-cli DEL {key}) and check that only run_gateway writes "
            "it. A running gateway advertises the device again at its next heartbeat; write again after that."
        )
    return gateway_id


class SetpointWriter:
    """Runs the write and read-back of one setpoint, on the gateway that holds the device or on a session of its own.

    ``write_response``, ``point_errors`` and ``expected_read_back`` are those of the driver
    that ran the write, as write_setpoint reads them from a driver.
    """

    def __init__(self, device):
        self.device = device
        self.schema = connection.schema_name
        self.write_response = None
        self.point_errors = {}
        # Id of the gateway the write went to, or None for a session of its own.
        self.gateway_id = None
        self._driver = None
        self._expected = None

    def expected_read_back(self, point, written):
        if self._driver is not None:
            return self._driver.expected_read_back(point, written)
        return self._expected

    def write_and_read_back(self, point, value):
        """Return (previous value, value written, read-back sample), like ``write_and_read_back`` on a driver.

        Raise DeviceUnreachable (NoGatewayReply when the gateway did not reply in time),
        WriteRejected or ValueError as a driver does.
        """
        if self.device.protocol in ROUTED_PROTOCOLS:
            self.gateway_id = gateway_holding(self.schema, self.device.pk)
        if self.gateway_id is None:
            return self._write_in_own_session(point, value)
        return self._write_through_gateway(point, value)

    def _write_in_own_session(self, point, value):
        # In a worker that polls, a Modbus write goes over the device's pooled connection (apps.protocols.sessions).
        self._driver = make_driver(self.device)
        try:
            return run_session(self._driver, lambda driver: write_and_read_back(driver, point, value))
        finally:
            self.write_response = self._driver.write_response
            self.point_errors = self._driver.point_errors

    def _write_through_gateway(self, point, value):
        timeout = reply_timeout(self.device)
        request_id = uuid.uuid4().hex
        request = {
            "id": request_id,
            "schema": self.schema,
            "device": self.device.pk,
            "point": {"pk": point.pk, **{name: getattr(point, name) for name in IDENTITY_FIELDS + WRITE_FIELDS}},
            "value": value,
            # The gateway executes the request only on a connection made with these settings.
            "connection": connection_digest(self.device),
            # Wall-clock time, because the gateway runs in another process. It skips requests past it.
            "deadline": time.time() + timeout,
        }
        queue = command_key(self.gateway_id)
        # A client of its own, because redis-py's default 5 s socket timeout would end a longer BLPOP.
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout + 5, socket_connect_timeout=5)
        try:
            with client.pipeline() as pipeline:
                pipeline.rpush(queue, json.dumps(request))
                # Requests to a gateway that stopped expire with the list, at most a second after the caller gave up.
                pipeline.expire(queue, math.ceil(timeout))
                pipeline.execute()
            reply = client.blpop([reply_key(request_id)], timeout=timeout)
        except redis.RedisError as exc:
            raise DeviceUnreachable(
                f"Sending the setpoint of point {point.pk} to gateway {self.gateway_id} through Redis failed "
                f"({exc}). Check that Redis runs, then read the device's value before writing again."
            ) from exc
        finally:
            client.close()
        if reply is None:
            raise NoGatewayReply(
                f"Gateway {self.gateway_id}, which holds the connection to device {self.device.pk}, did not reply "
                f"within {timeout:g} s (request {request_id}). The write may have reached the device: check that "
                "run_gateway is running and read the device's value before writing again."
            )
        try:
            reply = checked_reply(json.loads(reply[1]))
        except (ValueError, TypeError) as exc:
            # The reply may be of a request that ran, so the write counts as unconfirmed, never as not written.
            raise UnconfirmedWrite(
                f"The reply of gateway {self.gateway_id} to request {request_id} was malformed ({exc}). The write "
                "may have reached the device: check that run_gateway runs the same version as this process, and "
                "read the device's value before writing again."
            ) from exc
        return self._result_of(reply, point)

    def _result_of(self, reply, point):
        outcome = reply["outcome"]
        self.write_response = reply.get("write_response")
        if reply.get("point_error"):
            self.point_errors = {point.pk: reply["point_error"]}
        message = reply.get("message") or f"the gateway replied {outcome}"
        if outcome == "rejected":
            raise WriteRejected(message)
        if outcome == "invalid":
            raise ValueError(message)
        if outcome == "unconfirmed":
            raise UnconfirmedWrite(message)
        if outcome != "ok":
            raise DeviceUnreachable(message)

        self._expected = reply["expected"]
        read_back = reply["read_back"]
        sample = Sample(point.sensor_id, read_back["time"], read_back["value"], read_back["quality"])
        return reply["previous"], reply["written"], sample


def checked_reply(reply):
    """Return the decoded gateway reply with ``read_back["time"]`` parsed, or raise ValueError or TypeError naming the first invalid field."""
    if not isinstance(reply, dict):
        raise TypeError(f"the reply is a JSON {type(reply).__name__}, not an object")
    _checked_field(reply, "outcome", str)
    for name in ("message", "write_response", "point_error"):
        _checked_field(reply, name, str, required=False, nullable=True)
    if reply["outcome"] != "ok":
        return reply

    _checked_field(reply, "previous", NUMBER_TYPES, nullable=True)
    _checked_field(reply, "written", NUMBER_TYPES)
    _checked_field(reply, "expected", NUMBER_TYPES, nullable=True)
    read_back = _checked_field(reply, "read_back", dict)
    _checked_field(read_back, "value", NUMBER_TYPES, nullable=True, where="read_back")
    quality = _checked_field(read_back, "quality", int, where="read_back")
    if isinstance(quality, bool):
        raise TypeError("read_back.quality is a boolean, not an integer")
    text = _checked_field(read_back, "time", str, where="read_back")
    try:
        time_read = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"read_back.time {text[:40]!r} is not an ISO 8601 time") from None
    if time_read.tzinfo is None:
        raise ValueError(f"read_back.time {text[:40]!r} has no UTC offset")
    return {**reply, "read_back": {**read_back, "time": time_read}}


def _checked_field(mapping, name, types, *, required=True, nullable=False, where=None):
    label = name if where is None else f"{where}.{name}"
    if name not in mapping:
        if required:
            raise ValueError(f"{label} is missing")
        return None
    value = mapping[name]
    if value is None and nullable:
        return None
    if not isinstance(value, types):
        raise TypeError(f"{label} is {json.dumps(value)[:40]}, of the wrong type")
    return value


# The gateway's side


class CommandServer:
    """Executes setpoint requests routed to one gateway on the drivers of the connections that gateway holds.

    ``gateway.connections`` maps (schema, device id) to a SupervisedConnection, whose
    ``command_lock`` lets one request per device run at a time. Requests for other devices
    run in tasks of their own, so a slow outstation delays only its own requests.
    """

    def __init__(self, gateway):
        self.gateway = gateway
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.client = None
        self.advertised = set()
        self.tasks = set()
        self._advertise_now = None
        self._advertiser = None
        self._listener = None
        # (schema, device id, other gateway id) already reported by _warn_if_shared.
        self._shared_warned = set()

    def request_advertisement(self):
        """Advertise the held devices now instead of at the next heartbeat, e.g. after a reload started connections."""
        if self._advertise_now is not None:
            self._advertise_now.set()

    def advertisement_seconds(self):
        return max(3 * self.gateway.heartbeat_interval, MIN_ADVERTISEMENT_SECONDS)

    def start(self):
        """Start advertising the held devices every heartbeat and executing the requests pushed to this gateway.

        The gateway stops it in two steps: ``stop_requests`` before its connections close, ``close`` after.
        """
        # BLPOP blocks server-side for LISTEN_SECONDS at most, well inside the socket timeout.
        self._advertise_now = asyncio.Event()
        self.client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=LISTEN_SECONDS + 10, socket_connect_timeout=5
        )
        logger.info("Gateway %s: accepting setpoint requests on %s", self.gateway_id, command_key(self.gateway_id))
        self._advertiser = asyncio.create_task(self._advertise_every_heartbeat(), name="gateway-advertise")
        self._listener = asyncio.create_task(self._listen(), name="gateway-listen")

    async def stop_requests(self):
        """Stop taking requests, let those in progress finish for up to STOP_WAIT_SECONDS, then interrupt the rest.

        The advertisements stay, so callers do not open a second master while the gateway's is connected.
        ``close`` replies to the requests pushed meanwhile.
        """
        if self._listener is None:
            return
        await cancel_and_wait([self._listener], self.owner)
        if self.tasks:
            logger.info("Gateway %s: stopped taking setpoint requests; waiting up to %g s for %d in progress",
                        self.gateway_id, STOP_WAIT_SECONDS, len(self.tasks))
            await asyncio.wait(self.tasks, timeout=STOP_WAIT_SECONDS)
        # An interrupted request sends its "unconfirmed" reply before it ends, which takes up to REDIS_STOP_SECONDS.
        await cancel_and_wait(list(self.tasks), self.owner, recancel_seconds=REDIS_STOP_SECONDS + 1)

    async def close(self):
        """Stop advertising, withdraw the advertisements, reply to the requests still queued and close the client.

        Call it after the connections closed, so that callers who find no advertisement open their own session
        only once the gateway's master is gone.
        """
        if self._advertiser is None:
            return
        await cancel_and_wait([self._advertiser], self.owner)
        await self._withdraw_all()
        await self._reply_to_queued()
        await self.client.aclose()
        logger.info("Gateway %s: stopped accepting setpoint requests", self.gateway_id)

    @property
    def owner(self):
        return f"Gateway {self.gateway_id}"

    async def _advertise_every_heartbeat(self):
        while True:
            try:
                await self.advertise()
            except redis.RedisError as exc:
                logger.warning("Gateway %s: advertising its devices in Redis failed: %s", self.gateway_id, exc)
            except Exception:
                # Without advertisements callers would open sessions of their own, so the loop keeps going.
                logger.exception("Gateway %s: advertising its devices failed", self.gateway_id)
            try:
                async with asyncio.timeout(self.gateway.heartbeat_interval):
                    await self._advertise_now.wait()
            except TimeoutError:
                pass
            self._advertise_now.clear()

    async def advertise(self):
        """Advertise every held device of a routed protocol, and withdraw those the gateway no longer holds."""
        held_keys = {
            key for key, supervised in self.gateway.connections.items()
            if supervised.spec.device.protocol in ROUTED_PROTOCOLS
        }
        seconds = self.advertisement_seconds()
        ordered = sorted(held_keys)
        async with self.client.pipeline(transaction=False) as pipeline:
            for schema, device_id in ordered:
                pipeline.set(advertisement_key(schema, device_id), self.gateway_id, ex=max(1, round(seconds)), get=True)
            for schema, device_id in self.advertised - held_keys:
                pipeline.eval(_DELETE_IF_OWNER, 1, advertisement_key(schema, device_id), self.gateway_id)
            results = await pipeline.execute()
        # The first time, the key may still name a gateway that crashed, so only a key taken over since counts.
        for key, previous in zip(ordered, results, strict=False):
            if key in self.advertised:
                self._warn_if_shared(*key, previous)
        self.advertised = held_keys

    def _warn_if_shared(self, schema, device_id, previous):
        """Log once per device and other gateway when another gateway advertised the device since the last heartbeat."""
        other = None if previous is None else previous.decode(errors="replace")
        if other in (None, self.gateway_id) or (schema, device_id, other) in self._shared_warned:
            return
        self._shared_warned.add((schema, device_id, other))
        logger.warning(
            "Gateway %s: schema %s device %s is also held by gateway %s, so two DNP3 masters compete for one "
            "outstation. Run one run_gateway per database.", self.gateway_id, schema, device_id, other,
        )

    async def _withdraw_all(self):
        try:
            async with asyncio.timeout(REDIS_STOP_SECONDS):
                async with self.client.pipeline(transaction=False) as pipeline:
                    for schema, device_id in self.advertised:
                        pipeline.eval(_DELETE_IF_OWNER, 1, advertisement_key(schema, device_id), self.gateway_id)
                    await pipeline.execute()
            self.advertised = set()
        except (redis.RedisError, TimeoutError) as exc:
            logger.warning(
                "Gateway %s: withdrawing %d device advertisements failed (they expire by themselves): %s",
                self.gateway_id, len(self.advertised), exc or f"timed out after {REDIS_STOP_SECONDS:g} s",
            )

    async def _reply_to_queued(self):
        """Reply "stopping" to the requests still in this gateway's command list, so their callers need not wait."""
        replied = 0
        try:
            async with asyncio.timeout(REDIS_STOP_SECONDS):
                while (payload := await self.client.lpop(command_key(self.gateway_id))) is not None:
                    request = _parsed_request(payload, self.gateway_id)
                    if request is None:
                        continue
                    message = (
                        f"Gateway {self.gateway_id} stopped before it ran request {request.id}, so nothing was "
                        "written. Write again: the gateway that holds the device next, or your own session, runs it."
                    )
                    await self._send_reply(request, {"outcome": "stopping", "message": message})
                    replied += 1
        except (redis.RedisError, TimeoutError) as exc:
            logger.warning("Gateway %s: replying to the requests left in its command list failed after %d: %s",
                           self.gateway_id, replied, exc or f"timed out after {REDIS_STOP_SECONDS:g} s")
            return
        if replied:
            logger.info("Gateway %s: replied 'stopping' to %d queued setpoint requests", self.gateway_id, replied)

    async def _listen(self):
        failures = 0
        while True:
            try:
                popped = await self.client.blpop([command_key(self.gateway_id)], timeout=LISTEN_SECONDS)
            except redis.RedisError as exc:
                failures += 1
                delay = min(2 ** (failures - 1), MAX_LISTEN_RETRY_SECONDS)
                logger.warning(
                    "Gateway %s: reading setpoint requests from Redis failed (%d in a row), retrying in %g s: %s",
                    self.gateway_id, failures, delay, exc,
                )
                await asyncio.sleep(delay)
                continue
            if failures:
                logger.info("Gateway %s: reading setpoint requests from Redis again", self.gateway_id)
                failures = 0
            if popped is not None:
                task = asyncio.create_task(self.execute(popped[1]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def execute(self, payload):
        """Execute one request (JSON bytes), push its reply and log it with schema, device, point and request id."""
        request = _parsed_request(payload, self.gateway_id)
        if request is None:
            return
        logger.info("%s: setpoint request received", request.ids)
        try:
            reply = await self._reply_for(
                request.ids, request.schema, request.device_id, request.point_id, request.fields, request.value,
                request.deadline, request.settings_digest,
            )
        except asyncio.CancelledError:
            # The gateway is stopping. The command may have reached the device, so the caller learns it is unconfirmed.
            message = (
                f"Gateway {self.gateway_id} stopped while it ran request {request.id}. The write may have reached "
                "the device: read the device's value before writing again."
            )
            logger.warning("%s: setpoint request interrupted by the gateway's stop", request.ids)
            await self._send_reply(request, {"outcome": "unconfirmed", "message": message})
            raise
        level = logging.INFO if reply["outcome"] == "ok" else logging.WARNING
        outcome = reply["outcome"] if "message" not in reply else f"{reply['outcome']}: {reply['message']}"
        logger.log(level, "%s: setpoint request %s", request.ids, outcome)
        if reply["outcome"] == "expired":
            # The caller gave up and recorded the failure, so no one reads a reply.
            return
        await self._send_reply(request, reply)

    async def _send_reply(self, request, reply):
        key = reply_key(request.id)
        try:
            async with asyncio.timeout(REDIS_STOP_SECONDS):
                async with self.client.pipeline(transaction=True) as pipeline:
                    pipeline.lpush(key, json.dumps(reply))
                    pipeline.expire(key, max(1, round(request.deadline - time.time()) + 5))
                    await pipeline.execute()
        except (redis.RedisError, TimeoutError) as exc:
            logger.error("%s: sending the %s reply through Redis failed: %s",
                         request.ids, reply["outcome"], exc or f"timed out after {REDIS_STOP_SECONDS:g} s")

    async def _reply_for(self, ids, schema, device_id, point_id, fields, value, deadline, settings_digest):
        supervised = self.gateway.connections.get((schema, device_id))
        if supervised is None or supervised.spec.device.protocol not in ROUTED_PROTOCOLS:
            return {"outcome": "not_held", "message": (
                f"Gateway {self.gateway_id} holds no connection to device {device_id} in schema {schema}. "
                "Check that the device is enabled, then write again."
            )}
        # Differing digests mean the device was re-pointed since one side read it, so this connection may reach
        # another outstation.
        if settings_digest != connection_digest(supervised.spec.device):
            self.gateway.request_reload()
            return {"outcome": "stale", "message": (
                f"Gateway {self.gateway_id} has not loaded the current connection settings of device {device_id} "
                "yet (host, port, DNP3 addresses or TLS settings changed), so it sent no command over its old "
                f"connection. It reloads every {self.gateway.reload_interval:g} s (run_gateway --reload) and was "
                "asked to reload now; write again after that."
            )}
        point = _point_for_request(supervised.spec.points, point_id, fields)
        if point is None:
            return {"outcome": "not_held", "message": (
                f"Gateway {self.gateway_id} has no point {point_id} of device {device_id} with this sensor, type and "
                f"index. It loads changed points every {self.gateway.reload_interval:g} s, so write again after that."
            )}

        remaining = deadline - time.time()
        if remaining <= 0:
            return {"outcome": "expired", "message": f"the deadline passed {-remaining:.1f} s before it started"}
        driver = None
        try:
            async with asyncio.timeout(remaining):
                async with supervised.command_lock:
                    driver = supervised.driver
                    if driver is None or not driver.connected:
                        return {"outcome": "unreachable", "message": (
                            f"The gateway's connection to device {device_id} is down and reconnecting "
                            f"({supervised.failures} failures in a row). Write again once the device is online."
                        )}
                    previous, written, read_back = await write_and_read_back(driver, point, value)
        except UnconfirmedWrite as exc:
            return _failure("unconfirmed", exc, driver, point)
        except DeviceUnreachable as exc:
            return _failure("unreachable", exc, driver, point)
        except WriteRejected as exc:
            return _failure("rejected", exc, driver, point)
        except ValueError as exc:
            return _failure("invalid", exc, driver, point)
        except TimeoutError:
            message = (f"The gateway did not finish the write within the caller's {remaining:.1f} s, "
                       "and the outstation may have executed it.")
            return _failure("expired", message, driver, point)
        except Exception as exc:
            # A driver bug fails this request only, never the gateway or the device's connection.
            logger.exception("%s: setpoint request failed", ids)
            return _failure("failed", f"{type(exc).__name__}: {exc}", driver, point)

        return {
            "outcome": "ok",
            "previous": previous,
            "written": written,
            "expected": driver.expected_read_back(point, written),
            "read_back": {
                "value": read_back.value,
                "quality": int(read_back.quality),
                "time": read_back.time.astimezone(timezone.utc).isoformat(),
            },
            "write_response": driver.write_response,
            "point_error": driver.point_errors.get(point.pk),
        }


@dataclass(frozen=True)
class SetpointRequest:
    """A setpoint request as the gateway pops it from its command list."""

    id: str
    schema: str
    device_id: int
    point_id: int
    fields: dict
    value: float
    deadline: float
    # A missing digest never matches, so the reply is "stale" rather than a command on unknown settings.
    settings_digest: str | None

    @property
    def ids(self):
        return f"Schema {self.schema} device {self.device_id} point {self.point_id} request {self.id}"


def _parsed_request(payload, gateway_id):
    """Return the SetpointRequest of JSON bytes, or None after logging why it is malformed."""
    try:
        request = json.loads(payload)
        fields = request["point"]
        if not isinstance(request["schema"], str) or not isinstance(fields, dict):
            raise TypeError(f"schema {request['schema']!r} is not a string or point {fields!r} is not an object")
        return SetpointRequest(
            id=str(request["id"]), schema=request["schema"], device_id=int(request["device"]),
            point_id=int(fields["pk"]), fields=fields, value=float(request["value"]),
            deadline=float(request["deadline"]), settings_digest=request.get("connection"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("Gateway %s: dropped a malformed setpoint request (%s: %s)", gateway_id, type(exc).__name__, exc)
        return None


def _point_for_request(points, point_id, fields):
    """Return a copy of the held point ``point_id`` with the request's write fields, or None when it does not match."""
    held_point = next((point for point in points if point.pk == point_id), None)
    if held_point is None or any(getattr(held_point, name) != fields.get(name) for name in IDENTITY_FIELDS):
        return None
    point = copy.copy(held_point)
    for name in WRITE_FIELDS:
        if name in fields:
            setattr(point, name, fields[name])
    return point


def _failure(outcome, error, driver, point):
    return {
        "outcome": outcome,
        "message": str(error),
        "write_response": None if driver is None else driver.write_response,
        "point_error": None if driver is None else driver.point_errors.get(point.pk),
    }
