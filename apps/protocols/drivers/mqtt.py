"""MQTT subscription driver on paho-mqtt 2.

The client uses a fixed client id and a persistent session (clean session off) with
QoS 1 by default, so the broker queues messages while the gateway reconnects. Paho's own
reconnect is off: when the link drops, ``run`` raises DeviceUnreachable and the gateway
reconnects with back-off, subscribing again on every connect.

TLS is on when the device has trusted certificates or a client certificate of the tenant's
certificate store, or a CA file on the gateway host (``tls_ca_file``). Certificates of the
store are loaded into an ``ssl.SSLContext`` in memory, except the client certificate and its
decrypted key: ``SSLContext.load_cert_chain`` accepts only paths, so they go to a 0600 file
that is deleted right after loading. TLS files must lie inside the operator's
THERMACORE_TLS_FILES_DIR, which every connect checks again. The broker's host name is checked unless
``tls_verify_hostname`` is off.

Paho calls back from its network thread; decoding happens there and the samples are
handed to the event loop with ``call_soon_threadsafe``.

The broker sends a topic's retained message again on every subscribe, so after each
reconnect. A copy of a message already received keeps the arrival time it first had
(``RetainedMessageTimes``), which makes its samples the same readings as before, and ingest
stores nothing twice. A device that went offline thus does not look fresh after a reconnect.
"""

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from django.core.exceptions import ValidationError
from paho.mqtt.enums import CallbackAPIVersion

from ..mqtt.payloads import decode_message
from ..mqtt.sparkplug import NAMESPACE as SPARKPLUG_NAMESPACE
from ..mqtt.sparkplug import SparkplugSession, rebirth_request, subscription_filter
from ..validators import TLS_FILE_FIELDS, resolve_tls_file
from .base import DeviceUnreachable, SubscriptionDriver, WriteRejected, check_device_host, register_driver

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30
# At most this many malformed-payload warnings per device and minute; the rest are only counted.
MALFORMED_LOG_LIMIT_PER_MINUTE = 20


class RetainedMessageTimes:
    """First arrival time of recent payloads per (schema, device id, topic), shared by the driver instances of a process.

    The gateway builds a new driver for every reconnect, so the times outlive a driver. A
    process restart forgets them, and then one retained copy is stored once more.
    """

    # Payloads remembered per topic: the broker's retained copy may be older than the last live message.
    PAYLOADS_PER_TOPIC = 4

    def __init__(self, max_topics=100_000):
        self.max_topics = max_topics
        self._times = OrderedDict()
        self._lock = threading.Lock()

    def arrival_time(self, key, payload, received_at, *, retained):
        """Return the time of the message: its first arrival for a retained copy seen before, else ``received_at``."""
        digest = hashlib.sha256(payload).digest()
        with self._lock:
            seen = self._times.get(key)
            if seen is None:
                seen = self._times[key] = OrderedDict()
                if len(self._times) > self.max_topics:
                    self._times.popitem(last=False)
            self._times.move_to_end(key)
            if retained and digest in seen:
                return seen[digest]
            seen[digest] = received_at
            seen.move_to_end(digest)
            if len(seen) > self.PAYLOADS_PER_TOPIC:
                seen.popitem(last=False)
            return received_at


retained_message_times = RetainedMessageTimes()


class _CheckedAddressClient(mqtt.Client):
    """A paho client that opens its TCP connection to an address the host check returned.

    connect() still gets the device's host name, because paho 2.2 sends that name as TLS SNI
    and checks the broker certificate against it.
    """

    def __init__(self, *args, ip_address, **kwargs):
        super().__init__(*args, **kwargs)
        self.ip_address = ip_address

    # NOTE: this overrides a private method of paho-mqtt 2.2, which _create_socket() calls on each connect.
    # A paho upgrade must keep this override working, or the client resolves the host name again.
    def _create_socket_connection(self):
        address = (self.ip_address, self._port)
        source = (self._bind_address, self._bind_port)
        proxy = self._get_proxy()
        if proxy:
            return mqtt.socks.create_connection(address, timeout=self._connect_timeout, source_address=source, **proxy)
        return socket.create_connection(address, timeout=self._connect_timeout, source_address=source)


@register_driver
class MqttDriver(SubscriptionDriver):
    protocol = "mqtt"
    # Persistent session: the broker queues QoS 1 and 2 messages while the gateway reconnects.
    clean_session = False

    def __init__(self, device, *, schema=""):
        super().__init__(device, schema=schema)
        self.client = None
        self.points = []
        self.latest = {}
        self.malformed_count = 0
        self._lock = threading.Lock()
        self._log_window_start = 0.0
        self._logged_in_window = 0
        self._deliver = None
        self._loop = None
        self._connect_result = None
        self._lost = None
        self._closing = False
        self._plain_points = []
        self.sparkplug = None

    @property
    def client_id(self):
        return self.device.client_id or f"thermacore-{self.schema or 'public'}-{self.device.pk}"

    @property
    def topic_filters(self):
        return sorted({
            subscription_filter(point.topic) if point.sparkplug_metric else point.topic for point in self.points
        })

    async def connect(self):
        if self.connected:
            return
        ip_address = await check_device_host(self.device)
        self._loop = asyncio.get_running_loop()
        self._connect_result = self._loop.create_future()
        self._lost = self._loop.create_future()
        self._closing = False
        self.client = self._make_client(ip_address)
        address = f"{self.device.host}:{self.device.port}"
        try:
            async with asyncio.timeout(self.device.timeout):
                await asyncio.to_thread(self.client.connect, self.device.host, self.device.port, KEEPALIVE_SECONDS)
        except (TimeoutError, OSError) as exc:
            raise DeviceUnreachable(f"Cannot connect to MQTT broker {address}: {exc or 'timed out'}") from exc
        self.client.loop_start()
        try:
            async with asyncio.timeout(self.device.timeout):
                await asyncio.shield(self._connect_result)
        except TimeoutError:
            raise DeviceUnreachable(
                f"MQTT broker {address} did not acknowledge the connection within {self.device.timeout} s."
            ) from None

    async def run(self, points, deliver):
        self.points = list(points)
        self._plain_points = [point for point in self.points if not point.sparkplug_metric]
        sparkplug_points = [point for point in self.points if point.sparkplug_metric]
        self.sparkplug = SparkplugSession(sparkplug_points) if sparkplug_points else None
        self._deliver = deliver
        await self.connect()
        reason = await self._lost
        raise DeviceUnreachable(f"Connection to MQTT broker {self.device.host}:{self.device.port} lost: {reason}")

    def missing_value_reason(self, point):
        return f"no message received on {point.topic!r} since the gateway connected"

    async def write(self, point, value):
        raise WriteRejected(
            f"Point {point.pk} is an MQTT subscription and takes no setpoints; write through a Modbus or OPC UA point."
        )

    async def close(self):
        if self.client is None:
            return
        self._closing = True
        client, self.client = self.client, None
        self.connected = False
        # disconnect() and loop_stop() wait for the network thread, so keep them off the event loop.
        await asyncio.to_thread(_stop_client, client)

    def _make_client(self, ip_address):
        client = _CheckedAddressClient(
            CallbackAPIVersion.VERSION2,
            ip_address=ip_address,
            client_id=self.client_id,
            clean_session=self.clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if self.device.username:
            client.username_pw_set(self.device.username, self.device.password or None)
        context = self._tls_context()
        if context is not None:
            # Paho 2 takes its hostname check setting from context.check_hostname.
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _tls_context(self):
        """Return the SSL context for the broker connection, or None when the device does not use TLS."""
        device = self.device
        trusted, client_certificate = self._store_certificates()
        if not (trusted or client_certificate or device.tls_ca_file):
            return None

        if not (trusted or device.tls_ca_file):
            raise DeviceUnreachable(
                f"MQTT device {device.pk} has a client certificate but trusts no broker certificate; add the "
                "broker's CA to its trusted certificates."
            )

        files = self._allowed_tls_files()
        # Unlike ssl.create_default_context, this context trusts no system CA: only the device's trust list.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = device.tls_verify_hostname
        try:
            if files.get("tls_ca_file"):
                context.load_verify_locations(cafile=files["tls_ca_file"])
            if trusted:
                context.load_verify_locations(cadata="".join(certificate.certificate_pem for certificate in trusted))
            if client_certificate is not None:
                _load_client_certificate(context, client_certificate)
            elif files.get("tls_cert_file"):
                context.load_cert_chain(files["tls_cert_file"], files.get("tls_key_file"))
        except (OSError, ssl.SSLError) as exc:
            raise DeviceUnreachable(
                f"TLS settings of MQTT device {device.pk} cannot be loaded: {exc}; check its CA, certificate and "
                "key files or certificates."
            ) from exc

        return context

    def _allowed_tls_files(self):
        """Return the real paths of the device's TLS file settings, checked again against THERMACORE_TLS_FILES_DIR.

        A device saved before the directory was restricted, or a symbolic link changed since, must
        not make the gateway read files outside it.
        """
        files = {}
        for field in TLS_FILE_FIELDS:
            value = getattr(self.device, field)
            if not value:
                continue
            try:
                files[field] = resolve_tls_file(field, value)
            except ValidationError as exc:
                logger.warning(
                    "Schema %s device %s: rejected %s outside the TLS files directory", self.schema, self.device.pk,
                    field,
                )
                raise DeviceUnreachable(
                    f"TLS settings of MQTT device {self.device.pk} are rejected: {' '.join(exc.messages)}"
                ) from exc
        return files

    def _store_certificates(self):
        """Return the device's trusted certificates and client certificate (or None) as its caller loaded them.

        This runs on an event loop, where the ORM cannot query, so callers load the device with
        Device.objects.with_certificates() or prefetch_related_objects.
        """
        device = self.device
        if device._state.adding:
            return [], None
        cache = getattr(device, "_prefetched_objects_cache", {})
        certificate_loaded = device.client_certificate_id is None or type(device).client_certificate.is_cached(device)
        if "trusted_certificates" in cache and certificate_loaded:
            return list(cache["trusted_certificates"]), device.client_certificate
        if device.client_certificate_id is not None:
            raise DeviceUnreachable(
                f"MQTT device {device.pk} has a client certificate, but its certificates were not loaded before "
                "connecting; load the device with Device.objects.with_certificates()."
            )
        # NOTE: without loaded certificates only the TLS files apply, so trusted certificates are not used here.
        logger.warning(
            "Schema %s device %s: certificates not loaded before connecting, so store certificates are not used",
            self.schema, device.pk,
        )
        return [], None

    # The callbacks below run on paho's network thread.

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            error = DeviceUnreachable(
                f"MQTT broker {self.device.host}:{self.device.port} refused the connection: {reason_code}"
            )
            self._loop.call_soon_threadsafe(_settle, self._connect_result, error)
            return
        filters = self.topic_filters
        logger.info(
            "Schema %s device %s: connected to MQTT broker %s:%s as %s (session present: %s), subscribing to %s",
            self.schema, self.device.pk, self.device.host, self.device.port, self.client_id,
            flags.session_present, ", ".join(filters) or "nothing",
        )
        # Subscribing on every connect restores subscriptions that a broker without the session lost.
        if filters:
            client.subscribe([(topic, self.device.qos) for topic in filters])
        else:
            self._mark_connected()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        for topic, reason_code in zip(self.topic_filters, reason_code_list, strict=False):
            if reason_code.is_failure:
                logger.error(
                    "Schema %s device %s: MQTT broker %s:%s rejected the subscription to %s: %s",
                    self.schema, self.device.pk, self.device.host, self.device.port, topic, reason_code,
                )
        self._mark_connected()

    def _mark_connected(self):
        self.connected = True
        self.was_connected = True
        self._loop.call_soon_threadsafe(_settle, self._connect_result, None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        if self._closing:
            return
        self._loop.call_soon_threadsafe(_settle, self._lost, str(reason_code))
        # A refused connection ends here without a CONNACK; wake connect() too.
        self._loop.call_soon_threadsafe(
            _settle, self._connect_result, DeviceUnreachable(f"Disconnected before the CONNACK: {reason_code}")
        )

    def _on_message(self, client, userdata, message):
        # An exception escaping a paho callback ends the client's network thread, and with it every
        # later message of the device, so a payload that trips any bug is counted as malformed instead.
        try:
            self._handle_message(client, message)
        except Exception as exc:
            logger.exception("Schema %s device %s: handling the MQTT message on %s failed",
                             self.schema, self.device.pk, message.topic)
            self._count_malformed(message.topic, f"handling failed: {type(exc).__name__}")

    def _handle_message(self, client, message):
        received_at = datetime.now(timezone.utc)
        if self.sparkplug is not None and message.topic.startswith(SPARKPLUG_NAMESPACE + "/"):
            decoded = self.sparkplug.handle(message.topic, message.payload, received_at)
            if decoded.rebirth_topic:
                logger.warning(
                    "Schema %s device %s: requesting a Sparkplug rebirth on %s after %s",
                    self.schema, self.device.pk, decoded.rebirth_topic, "; ".join(decoded.errors),
                )
                client.publish(decoded.rebirth_topic, rebirth_request(received_at), qos=0)
        else:
            key = (self.schema, self.device.pk, message.topic)
            received_at = retained_message_times.arrival_time(key, message.payload, received_at, retained=message.retain)
            decoded = decode_message(message.topic, message.payload, self._plain_points, received_at)
        for reason in decoded.errors:
            self._count_malformed(message.topic, reason)
        if decoded.samples:
            for sample in decoded.samples:
                self.latest[sample.sensor_id] = sample
            self._loop.call_soon_threadsafe(self._deliver, decoded.samples)

    def _count_malformed(self, topic, reason):
        with self._lock:
            self.malformed_count += 1
            now = time.monotonic()
            if now - self._log_window_start >= 60:
                self._log_window_start = now
                self._logged_in_window = 0
            self._logged_in_window += 1
            log = self._logged_in_window <= MALFORMED_LOG_LIMIT_PER_MINUTE
        if log:
            logger.warning(
                "Schema %s device %s: malformed MQTT payload on %s (%d so far): %s",
                self.schema, self.device.pk, topic, self.malformed_count, reason,
            )


def _settle(future, outcome):
    """Resolve ``future`` once: an exception outcome fails it, anything else is its result."""
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _load_client_certificate(context, certificate):
    """Load a store certificate and its decrypted key into ``context`` through a 0600 file deleted at once."""
    descriptor, path = tempfile.mkstemp(prefix="thermacore-mqtt-", suffix=".pem")
    try:
        # mkstemp creates the file with mode 0600, readable by this user only.
        with os.fdopen(descriptor, "w") as file:
            file.write(certificate.certificate_pem)
            file.write(certificate.private_key_pem())
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _stop_client(client):
    client.disconnect()
    client.loop_stop()
