"""Connection tests and address-space browsing for configuring devices: OPC UA browse and MQTT topic discovery.

Browsing and topic discovery open a short-lived connection of their own, so they work whether
or not the gateway keeps one open to the same device. The connection test does the same, except
for a Modbus device tested in a worker process that polls: there it leases the device's pooled
connection (apps.protocols.sessions). They block for at most the device timeout (plus the
listening time of a topic discovery), and are meant for requests of a configuring user.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from asyncua import ua
from django.db import connection
from django.db.models import prefetch_related_objects

from apps.sensors.quality import quality_label

from .choices import Protocol
from .drivers.base import DeviceUnreachable
from .drivers.mqtt import MqttDriver
from .drivers.opcua import CONNECTION_ERRORS as OPCUA_ERRORS
from .mqtt.topics import validate_topic_filter
from .opcua.nodes import parse_node_id
from .sessions import make_driver, run_session

logger = logging.getLogger(__name__)

MAX_DISCOVERY_SECONDS = 30
# Topics listed by one discovery; a broker with more gets the first ones seen.
MAX_DISCOVERED_TOPICS = 500
SAMPLE_PAYLOAD_CHARS = 200
# Protocols whose driver can read one point right after connecting; the others only receive.
DIRECT_READ_PROTOCOLS = (Protocol.MODBUS_TCP, Protocol.OPCUA)


@dataclass
class ConnectionTestResult:
    ok: bool
    message: str
    round_trip_ms: float
    point_id: int | None = None
    value: float | None = None
    quality: str = ""


@dataclass
class DiscoveredTopic:
    topic: str
    sample_payload: str
    message_count: int = 1


@dataclass
class BrowsedNode:
    node_id: str
    browse_name: str
    display_name: str
    node_class: str
    data_type: str = ""


class BrowseError(Exception):
    """The address space could not be browsed because the device is unreachable or rejected the request."""


class InvalidBrowseRequest(ValueError):
    """The browse request names an invalid node id, topic filter or listening time, or a protocol without one."""


def check_connection(device):
    """Connect to ``device``, read its first enabled point where the protocol allows, close, and report.

    Modbus and OPC UA read the point; MQTT and DNP3 succeed once the broker acknowledges the
    connection or the outstation's channel opens, because their values arrive later.
    """
    driver = make_driver(device)
    point = device.points.filter(enabled=True).order_by("pk").first()
    if device.protocol not in DIRECT_READ_PROTOCOLS:
        point = None
    started = time.perf_counter()
    try:
        samples = run_session(driver, lambda connected: _read_point(connected, point))
    except DeviceUnreachable as exc:
        elapsed = (time.perf_counter() - started) * 1000
        logger.info("Schema %s device %s: connection test failed: %s", connection.schema_name, device.pk, exc)
        return ConnectionTestResult(ok=False, message=str(exc), round_trip_ms=elapsed)
    elapsed = (time.perf_counter() - started) * 1000

    if point is None:
        return ConnectionTestResult(ok=True, message=f"Connected to {device.host}:{device.port}.", round_trip_ms=elapsed)
    [sample] = samples
    reason = driver.point_errors.get(point.pk)
    return ConnectionTestResult(
        ok=reason is None,
        message=reason or f"Connected and read point {point.pk}.",
        round_trip_ms=elapsed,
        point_id=point.pk,
        value=sample.value,
        quality=quality_label(sample.quality),
    )


async def _read_point(driver, point):
    return await driver.read([point]) if point is not None else []


def browse_opcua(device, node_id=""):
    """Return the children of ``node_id`` (default: the Objects folder) with their class and data type."""
    start = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    if node_id:
        try:
            start = parse_node_id(node_id)
        except ValueError as exc:
            raise InvalidBrowseRequest(str(exc)) from exc
    driver = make_driver(device)
    try:
        return asyncio.run(_browse(driver, start))
    except DeviceUnreachable as exc:
        raise BrowseError(str(exc)) from exc


async def _browse(driver, start):
    async with driver:
        try:
            children = await driver.client.get_node(start).get_children()
            return [await _describe(child) for child in children]
        except ua.UaStatusCodeError as exc:
            raise BrowseError(f"Browsing node {start.to_string()} on {driver.url} failed: {exc}") from exc
        except OPCUA_ERRORS as exc:
            raise BrowseError(f"Browsing {driver.url} failed: {exc!r}") from exc


async def _describe(node):
    node_class = await node.read_node_class()
    browse_name = await node.read_browse_name()
    display_name = await node.read_display_name()
    data_type = ""
    if node_class == ua.NodeClass.Variable:
        type_id = await node.read_data_type()
        data_type = ua.ObjectIdNames.get(type_id.Identifier, "") if type_id.NamespaceIndex == 0 else ""
        data_type = data_type or type_id.to_string()
    return BrowsedNode(
        node_id=node.nodeid.to_string(),
        browse_name=browse_name.to_string(),
        display_name=display_name.Text or "",
        node_class=node_class.name,
        data_type=data_type,
    )


class TopicDiscovery(MqttDriver):
    """An MQTT client with a clean session of its own that records the topics it receives instead of samples."""

    clean_session = True

    def __init__(self, device, topic_filter, *, schema=""):
        super().__init__(device, schema=schema)
        self.topic_filter = topic_filter
        self.topics = {}
        self._discovery_id = uuid.uuid4().hex[:8]

    @property
    def client_id(self):
        return f"thermacore-discovery-{self.schema or 'public'}-{self.device.pk}-{self._discovery_id}"

    @property
    def topic_filters(self):
        return [self.topic_filter]

    def _on_message(self, client, userdata, message):
        with self._lock:
            seen = self.topics.get(message.topic)
            if seen is not None:
                seen.message_count += 1
            elif len(self.topics) < MAX_DISCOVERED_TOPICS:
                self.topics[message.topic] = DiscoveredTopic(message.topic, _shown_payload(message.payload))

    async def listen(self, seconds):
        async with self:
            # The listening window is the point of a discovery, not a wait for some event.
            await asyncio.sleep(seconds)
        with self._lock:
            return sorted(self.topics.values(), key=lambda topic: topic.topic)


def _shown_payload(payload):
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + payload[: SAMPLE_PAYLOAD_CHARS // 2].hex()
    return text[:SAMPLE_PAYLOAD_CHARS]


def discover_mqtt_topics(device, topic_filter="#", seconds=3.0):
    """Subscribe to ``topic_filter`` on the device's broker for ``seconds`` and return the topics seen, sorted.

    Retained messages arrive at once; other topics only when published within the window.
    """
    try:
        validate_topic_filter(topic_filter)
    except ValueError as exc:
        raise InvalidBrowseRequest(str(exc)) from exc
    if not 0 < seconds <= MAX_DISCOVERY_SECONDS:
        raise InvalidBrowseRequest(f"Listening time {seconds} s is invalid; give more than 0 and at most {MAX_DISCOVERY_SECONDS} s.")
    # The driver runs on an event loop, where the TLS certificates could not be loaded lazily.
    prefetch_related_objects([device], "client_certificate", "trusted_certificates")
    discovery = TopicDiscovery(device, topic_filter, schema=connection.schema_name)
    try:
        return asyncio.run(discovery.listen(seconds))
    except DeviceUnreachable as exc:
        raise BrowseError(str(exc)) from exc


def browse(device, *, node_id="", topic_filter="#", seconds=3.0):
    """Browse an OPC UA address space or discover MQTT topics, as the device's protocol has it."""
    if device.protocol == Protocol.OPCUA:
        return browse_opcua(device, node_id)
    if device.protocol == Protocol.MQTT:
        return discover_mqtt_topics(device, topic_filter, seconds)
    raise InvalidBrowseRequest(
        f"Device {device.pk} speaks {device.get_protocol_display()}, which has no address space to browse; "
        "browsing works for OPC UA and MQTT devices."
    )
