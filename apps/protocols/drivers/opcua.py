"""OPC UA subscription driver on asyncua.

Each connection creates one subscription with one monitored item per point, using the
point's sampling interval and absolute deadband. asyncua's own reconnect is off: when the
connection is lost, ``run`` raises DeviceUnreachable and the gateway connects again with
back-off, which builds a new session and subscription, so no monitored item is duplicated.
"""

import asyncio
import logging
import struct
from datetime import datetime, timezone

from asyncua import Client, ua

from ..opcua.nodes import parse_node_id
from ..opcua.security import RevokedServerCertificate, UntrustedServerCertificate, apply_security
from ..opcua.values import status_name, to_sample
from .base import (
    DeviceUnreachable,
    SubscriptionDriver,
    UnconfirmedWrite,
    WriteRejected,
    check_device_host,
    register_driver,
)

logger = logging.getLogger(__name__)

MIN_PUBLISHING_INTERVAL_MS = 100
CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError)

_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


class _CheckedAddressClient(Client):
    """An asyncua client that opens its socket to an address the host check returned.

    The endpoint URL that the client sends in Hello, GetEndpoints and CreateSession keeps the host name.
    """

    def __init__(self, url, *, ip_address, **kwargs):
        super().__init__(url, **kwargs)
        self.ip_address = ip_address

    async def connect_socket(self):
        # asyncua 2.1 opens every connection (connect, sessionless calls) through this method.
        await self.uaclient.connect_socket(self.ip_address, self.server_url.port)


@register_driver
class OpcUaDriver(SubscriptionDriver):
    protocol = "opcua"

    def __init__(self, device, *, schema=""):
        super().__init__(device, schema=schema)
        self.client = None
        self.subscription = None
        self.points_by_handle = {}
        self._deliver = None
        self._lost = None

    @property
    def url(self):
        return f"opc.tcp://{self.device.host}:{self.device.port}{self.device.endpoint_path}"

    async def connect(self):
        if self.client is not None:
            return
        ip_address = await check_device_host(self.device)
        self._lost = asyncio.get_running_loop().create_future()
        client = _CheckedAddressClient(
            self.url, ip_address=ip_address, timeout=self.device.timeout, watchdog_intervall=min(self.device.timeout, 5.0)
        )
        if self.device.username:
            client.set_user(self.device.username)
            client.set_password(self.device.password)
        client.connection_lost_callback = self._on_connection_lost
        check = None
        try:
            check = await apply_security(client, self.device)
            await client.connect()
        except CONNECTION_ERRORS as exc:
            # A rejected session can leave the secure channel open, so close what was opened.
            try:
                await client.disconnect()
            except CONNECTION_ERRORS:
                pass
            if check is not None and check.revocation is not None:
                raise RevokedServerCertificate(
                    f"OPC UA server {self.url} presented a revoked certificate ({check.describe_rejected()}): "
                    f"{check.describe_revocation()}: {exc}. Give the server a new certificate, or remove the CRL "
                    "from the store if the revocation is wrong."
                ) from exc
            if check is not None and check.rejected is not None:
                raise UntrustedServerCertificate(
                    f"OPC UA server {self.url} presented a certificate that device {self.device.pk} does not trust "
                    f"({check.describe_rejected()}): {exc}. Import the server certificate, or its CA certificate, "
                    "and add it to the device's trusted certificates."
                ) from exc
            raise DeviceUnreachable(f"Cannot connect to OPC UA server {self.url}: {exc!r}") from exc
        self.client = client
        self.connected = True
        self.was_connected = True

    async def run(self, points, deliver):
        self._deliver = deliver
        await self.connect()
        try:
            await self._subscribe(list(points))
        except CONNECTION_ERRORS as exc:
            raise DeviceUnreachable(f"Creating the subscription on {self.url} failed: {exc!r}") from exc
        reason = await self._lost
        self.connected = False
        raise DeviceUnreachable(f"Connection to OPC UA server {self.url} lost: {reason}")

    async def _subscribe(self, points):
        if not points:
            return
        publishing_interval = max(MIN_PUBLISHING_INTERVAL_MS, min(point.sampling_interval_ms for point in points))
        self.subscription = await self.client.create_subscription(publishing_interval, self)
        requests = []
        for handle, point in enumerate(points, start=1):
            self.points_by_handle[handle] = point
            requests.append(_monitored_item_request(point, handle))
        results = await self.subscription.create_monitored_items(requests)

        rejected = []
        now = datetime.now(timezone.utc)
        for point, result in zip(points, results, strict=True):
            if isinstance(result, ua.StatusCode):
                logger.error(
                    "Schema %s device %s: server %s rejected the monitored item of point %s (%s): %s",
                    self.schema, self.device.pk, self.url, point.pk, point.node_id, status_name(result.value),
                )
                rejected.append(to_sample(point, ua.DataValue(StatusCode=result), now).sample)
        if rejected:
            self._deliver(rejected)
        logger.info(
            "Schema %s device %s: subscribed to %d of %d nodes on %s every %s ms",
            self.schema, self.device.pk, len(points) - len(rejected), len(points), self.url, publishing_interval,
        )

    async def read(self, points):
        self.point_errors = {}
        samples = []
        for point in points:
            try:
                data_value = await self.client.get_node(parse_node_id(point.node_id)).read_data_value(
                    raise_on_bad_status=False
                )
            except CONNECTION_ERRORS as exc:
                raise DeviceUnreachable(f"Reading {point.node_id} from {self.url} failed: {exc!r}") from exc
            conversion = to_sample(point, data_value)
            if conversion.reason:
                self.point_errors[point.pk] = f"{point.node_id}: {conversion.reason}"
            samples.append(conversion.sample)
        return samples

    async def write(self, point, value):
        node = self.client.get_node(parse_node_id(point.node_id))
        try:
            variant_type = await node.read_data_type_as_variant_type()
        except CONNECTION_ERRORS as exc:
            raise DeviceUnreachable(f"Reading the data type of {point.node_id} from {self.url} failed: {exc!r}") from exc
        raw = _encode(point.to_raw(value), variant_type, point.node_id)
        try:
            await node.write_value(ua.DataValue(ua.Variant(raw, variant_type)))
        except ua.UaStatusCodeError as exc:
            raise WriteRejected(f"Server {self.url} rejected the write to {point.node_id}: {exc}") from exc
        except CONNECTION_ERRORS as exc:
            # The data type read just succeeded on this session, so the Write request was most likely sent.
            # NOTE: asyncua 2.1 raises ConnectionError both before sending and after a lost connection, so
            # a connection that closed between the two requests is reported as unconfirmed too.
            raise UnconfirmedWrite(
                f"Write of {point.node_id} on {self.url} got no response ({exc!r}), so the server may have "
                "applied it. Read the node's value before writing again."
            ) from exc
        return point.to_engineering(float(raw))

    async def close(self):
        if self.client is None:
            return
        client, self.client = self.client, None
        self.connected = False
        try:
            await client.disconnect()
        except CONNECTION_ERRORS as exc:
            # The server is often gone already when a lost connection is closed.
            logger.debug("Schema %s device %s: disconnect from %s failed: %r", self.schema, self.device.pk, self.url, exc)

    # Called by asyncua on the event loop.

    def datachange_notification(self, node, value, data):
        point = self.points_by_handle.get(data.subscription_data.client_handle)
        if point is None:
            return
        conversion = to_sample(point, data.monitored_item.Value)
        if conversion.reason:
            logger.warning(
                "Schema %s device %s point %s (%s): %s",
                self.schema, self.device.pk, point.pk, point.node_id, conversion.reason,
            )
        self._deliver([conversion.sample])

    def status_change_notification(self, status):
        code = status.Status.value
        logger.warning(
            "Schema %s device %s: subscription on %s changed status to %s",
            self.schema, self.device.pk, self.url, status_name(code),
        )
        if code >> 30:
            _settle(self._lost, f"subscription status {status_name(code)}")

    async def _on_connection_lost(self, exc):
        _settle(self._lost, repr(exc))


def _monitored_item_request(point, handle):
    parameters = ua.MonitoringParameters()
    parameters.ClientHandle = handle
    parameters.SamplingInterval = point.sampling_interval_ms
    parameters.QueueSize = 1
    parameters.DiscardOldest = True
    if point.deadband:
        data_filter = ua.DataChangeFilter()
        data_filter.Trigger = ua.DataChangeTrigger.StatusValue
        data_filter.DeadbandType = ua.DeadbandType.Absolute
        data_filter.DeadbandValue = point.deadband
        parameters.Filter = data_filter
    item = ua.ReadValueId()
    item.NodeId = parse_node_id(point.node_id)
    item.AttributeId = ua.AttributeIds.Value
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = item
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = parameters
    return request


def _encode(raw, variant_type, node_id):
    """Return ``raw`` as the Python value for ``variant_type``; raise ValueError when it does not fit."""
    if variant_type == ua.VariantType.Boolean:
        if raw not in (0, 1):
            raise ValueError(f"Node {node_id} is Boolean and takes 0 or 1, not {raw}.")
        return bool(raw)
    if variant_type in _INTEGER_RANGES:
        minimum, maximum = _INTEGER_RANGES[variant_type]
        number = round(raw)
        if not minimum <= number <= maximum:
            raise ValueError(
                f"Value {number} is out of range for node {node_id} of type {variant_type.name} ({minimum} to {maximum})."
            )
        return number
    if variant_type == ua.VariantType.Float:
        try:
            # The server stores 32 bits, so report the value it will hold.
            return struct.unpack("<f", struct.pack("<f", raw))[0]
        except OverflowError as exc:
            raise ValueError(f"Value {raw} is out of range for node {node_id} of type Float.") from exc
    if variant_type == ua.VariantType.Double:
        return float(raw)
    raise ValueError(f"Node {node_id} has data type {variant_type.name}, which takes no numeric setpoint.")


def _settle(future, reason):
    if future is not None and not future.done():
        future.set_result(reason)
