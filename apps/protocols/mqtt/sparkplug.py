"""Sparkplug B host side: decode births, data and deaths, resolve metric aliases, check sequence numbers.

Topics are ``spBv1.0/<group>/<message type>/<edge node>[/<device>]``. Payloads are protobuf
messages of the Eclipse Tahu ``sparkplug_b.proto``. The message classes below declare only the
fields that a host reads, with that schema's field numbers: the payload's timestamp, metrics and
seq, and each metric's name, alias, timestamp, datatype, is_null and scalar value. Datasets,
templates and properties are therefore skipped as unknown fields.

A point reads one metric: its ``topic`` is ``spBv1.0/<group>/<edge node>`` for a node metric
or ``spBv1.0/<group>/<edge node>/<device>`` for a device metric, and ``sparkplug_metric`` is the
metric name from the birth certificate.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
BIRTH_DEATH_SEQUENCE_METRIC = "bdSeq"
SEQUENCE_MODULUS = 256
# Message types that carry a sequence number; NDEATH is the broker-sent will and has none.
SEQUENCED_TYPES = {"NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"}
HOST_MESSAGE_TYPES = SEQUENCED_TYPES | {"NDEATH"}


def _build_message_classes():
    proto = descriptor_pb2.FileDescriptorProto(
        name="thermacore/sparkplug_b.proto", package="org.eclipse.tahu.protobuf", syntax="proto2"
    )
    payload = proto.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    field_type = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field_type.LABEL_OPTIONAL, field_type.LABEL_REPEATED
    metric.oneof_decl.add(name="value")
    for name, number, kind, oneof in (
        ("name", 1, field_type.TYPE_STRING, False),
        ("alias", 2, field_type.TYPE_UINT64, False),
        ("timestamp", 3, field_type.TYPE_UINT64, False),
        ("datatype", 4, field_type.TYPE_UINT32, False),
        ("is_historical", 5, field_type.TYPE_BOOL, False),
        ("is_transient", 6, field_type.TYPE_BOOL, False),
        ("is_null", 7, field_type.TYPE_BOOL, False),
        ("int_value", 10, field_type.TYPE_UINT32, True),
        ("long_value", 11, field_type.TYPE_UINT64, True),
        ("float_value", 12, field_type.TYPE_FLOAT, True),
        ("double_value", 13, field_type.TYPE_DOUBLE, True),
        ("boolean_value", 14, field_type.TYPE_BOOL, True),
        ("string_value", 15, field_type.TYPE_STRING, True),
        ("bytes_value", 16, field_type.TYPE_BYTES, True),
    ):
        added = metric.field.add(name=name, number=number, type=kind, label=optional)
        if oneof:
            added.oneof_index = 0
    payload.field.add(name="timestamp", number=1, type=field_type.TYPE_UINT64, label=optional)
    payload.field.add(
        name="metrics", number=2, type=field_type.TYPE_MESSAGE, label=repeated,
        type_name=".org.eclipse.tahu.protobuf.Payload.Metric",
    )
    payload.field.add(name="seq", number=3, type=field_type.TYPE_UINT64, label=optional)
    payload.field.add(name="uuid", number=4, type=field_type.TYPE_STRING, label=optional)
    payload.field.add(name="body", number=5, type=field_type.TYPE_BYTES, label=optional)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


Payload = _build_message_classes()


class DataType(IntEnum):
    """Sparkplug B metric data types (sparkplug_b.proto)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


# Signed types travel as unsigned two's complement in int_value or long_value, as Eclipse Tahu encodes them.
_SIGNED_BITS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_UNSIGNED = {DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64}


@dataclass(frozen=True)
class SparkplugTopic:
    group: str
    message_type: str
    edge_node: str
    device: str = ""

    @property
    def node_key(self):
        return (self.group, self.edge_node)

    @property
    def point_topic(self):
        """The ``topic`` that points of this node or device carry: the topic without its message type."""
        parts = [NAMESPACE, self.group, self.edge_node] + ([self.device] if self.device else [])
        return "/".join(parts)


def parse_topic(topic):
    """Return the SparkplugTopic of a ``spBv1.0`` topic, or None for other topics and STATE messages."""
    levels = topic.split("/")
    if levels[0] != NAMESPACE or len(levels) not in (4, 5) or levels[2] not in HOST_MESSAGE_TYPES | {"NCMD", "DCMD"}:
        return None
    return SparkplugTopic(levels[1], levels[2], levels[3], levels[4] if len(levels) == 5 else "")


def validate_point_topic(topic):
    """Raise ValueError unless ``topic`` is ``spBv1.0/<group>/<edge node>[/<device>]`` without wildcards."""
    levels = topic.split("/")
    if levels[0] != NAMESPACE or len(levels) not in (3, 4) or any(not level or level in "+#" for level in levels):
        raise ValueError(
            f"Sparkplug topic {topic!r} is invalid; use 'spBv1.0/<group>/<edge node>' for a node metric or "
            "'spBv1.0/<group>/<edge node>/<device>' for a device metric, without wildcards."
        )


def subscription_filter(point_topic):
    """Return the filter that receives births, data and deaths of the point topic's edge node and its devices."""
    _namespace, group, edge_node, *_device = point_topic.split("/")
    return f"{NAMESPACE}/{group}/+/{edge_node}/#"


def metric_value(metric):
    """Return (number, Quality.GOOD, "") for a numeric or boolean metric, else (None, bad quality, reason)."""
    if metric.is_null:
        return None, Quality.BAD, "the metric is null"
    try:
        datatype = DataType(metric.datatype)
    except ValueError:
        return None, Quality.BAD_CONFIGURATION, f"metric data type {metric.datatype} is not numeric"
    if datatype in _SIGNED_BITS:
        bits = _SIGNED_BITS[datatype]
        raw = metric.long_value if datatype == DataType.INT64 else metric.int_value
        raw &= (1 << bits) - 1
        return float(raw - (1 << bits) if raw >= 1 << (bits - 1) else raw), Quality.GOOD, ""
    if datatype in _UNSIGNED:
        return float(metric.long_value if datatype == DataType.UINT64 else metric.int_value), Quality.GOOD, ""
    if datatype == DataType.FLOAT:
        value = metric.float_value
    elif datatype == DataType.DOUBLE:
        value = metric.double_value
    elif datatype == DataType.BOOLEAN:
        return float(metric.boolean_value), Quality.GOOD, ""
    else:
        return None, Quality.BAD_CONFIGURATION, f"metric data type {datatype.name} is not numeric"
    if not math.isfinite(value):
        return None, Quality.BAD_NOT_A_NUMBER, f"value {value} is not finite"
    return value, Quality.GOOD, ""


def rebirth_request(now=None):
    """Return the NCMD payload that requests an edge node to publish its births again."""
    now = now or datetime.now(timezone.utc)
    payload = Payload(timestamp=int(now.timestamp() * 1000))
    payload.metrics.add(name=REBIRTH_METRIC, datatype=DataType.BOOLEAN, boolean_value=True,
                        timestamp=payload.timestamp)
    return payload.SerializeToString()


def rebirth_topic(topic):
    return f"{NAMESPACE}/{topic.group}/NCMD/{topic.edge_node}"


@dataclass
class _EdgeNode:
    """The state of one edge node as the host tracks it since its last NBIRTH."""

    birth_death_sequence: int | None
    last_sequence: int
    # Metric alias to (device or "" for the node, metric name), from NBIRTH and DBIRTH.
    aliases: dict = field(default_factory=dict)
    rebirth_requested: bool = False


@dataclass
class SparkplugResult:
    """Samples of one message, reasons why metrics or the message gave none, and whether to request a rebirth."""

    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    rebirth_topic: str = ""


class SparkplugSession:
    """The state of every edge node that one MQTT connection hears, turning its messages into samples.

    Not thread-safe: call ``handle`` from one thread (paho's network thread) only.
    """

    def __init__(self, points):
        # (point topic, metric name) to the points that read that metric.
        self.points = {}
        for point in points:
            self.points.setdefault((point.topic, point.sparkplug_metric), []).append(point)
        self.nodes = {}

    def handle(self, topic, payload_bytes, received_at):
        parsed = parse_topic(topic)
        result = SparkplugResult()
        if parsed is None or parsed.message_type not in HOST_MESSAGE_TYPES:
            return result
        try:
            payload = Payload.FromString(payload_bytes)
        except DecodeError as exc:
            result.errors.append(f"payload is not a Sparkplug B protobuf message: {exc}")
            return result

        if parsed.message_type == "NDEATH":
            self._on_node_death(parsed, payload, result, received_at)
            return result
        if parsed.message_type == "NBIRTH":
            self.nodes[parsed.node_key] = _EdgeNode(
                birth_death_sequence=_birth_death_sequence(payload), last_sequence=payload.seq
            )
        node = self.nodes.get(parsed.node_key)
        if node is None:
            # Aliases are unknown until a birth, so the data cannot be mapped yet.
            result.errors.append(f"{parsed.message_type} from edge node {parsed.edge_node} before its NBIRTH")
            result.rebirth_topic = rebirth_topic(parsed)
            self.nodes[parsed.node_key] = _EdgeNode(None, payload.seq, rebirth_requested=True)
            return result
        if parsed.message_type != "NBIRTH":
            self._check_sequence(node, parsed, payload, result)

        if parsed.message_type == "DDEATH":
            result.samples.extend(self._comm_lost(parsed.point_topic, received_at))
            return result
        if parsed.message_type in ("NBIRTH", "DBIRTH"):
            for metric in payload.metrics:
                if metric.HasField("alias") and metric.name:
                    node.aliases[metric.alias] = (parsed.device, metric.name)
        self._collect(parsed, node, payload, result, received_at)
        return result

    def _check_sequence(self, node, parsed, payload, result):
        expected = (node.last_sequence + 1) % SEQUENCE_MODULUS
        node.last_sequence = payload.seq
        if payload.seq == expected:
            return
        result.errors.append(
            f"{parsed.message_type} from edge node {parsed.edge_node} has sequence number {payload.seq}, "
            f"expected {expected}: messages were lost"
        )
        if not node.rebirth_requested:
            node.rebirth_requested = True
            result.rebirth_topic = rebirth_topic(parsed)

    def _collect(self, parsed, node, payload, result, received_at):
        for metric in payload.metrics:
            name = metric.name
            if not name and metric.HasField("alias"):
                _device, name = node.aliases.get(metric.alias, (parsed.device, ""))
            if not name:
                result.errors.append(f"metric alias {metric.alias} of {parsed.point_topic} is not in its birth")
                continue
            points = self.points.get((parsed.point_topic, name), ())
            if not points:
                continue
            value, quality, reason = metric_value(metric)
            timestamp = metric.timestamp or payload.timestamp
            time = datetime.fromtimestamp(timestamp / 1000, timezone.utc) if timestamp else received_at
            if reason:
                result.errors.append(f"metric {name!r} of {parsed.point_topic}: {reason}")
            for point in points:
                if value is None:
                    result.samples.append(Sample(point.sensor_id, time, None, quality))
                else:
                    result.samples.append(Sample(point.sensor_id, time, point.to_engineering(value), Quality.GOOD))

    def _on_node_death(self, parsed, payload, result, received_at):
        node = self.nodes.get(parsed.node_key)
        death_sequence = _birth_death_sequence(payload)
        if node is not None and None not in (node.birth_death_sequence, death_sequence):
            if node.birth_death_sequence != death_sequence:
                # The will of an older session, delivered after the node was born again.
                result.errors.append(
                    f"NDEATH of edge node {parsed.edge_node} with bdSeq {death_sequence} does not match its "
                    f"NBIRTH bdSeq {node.birth_death_sequence}; ignored"
                )
                return
        self.nodes.pop(parsed.node_key, None)
        node_topic = parsed.point_topic
        for point_topic, _metric in list(self.points):
            if point_topic == node_topic or point_topic.startswith(node_topic + "/"):
                result.samples.extend(self._comm_lost(point_topic, received_at, only_metric=_metric))

    def _comm_lost(self, point_topic, received_at, only_metric=None):
        samples = []
        for (topic, metric), points in self.points.items():
            if topic != point_topic or (only_metric is not None and metric != only_metric):
                continue
            samples.extend(Sample(point.sensor_id, received_at, None, Quality.BAD_COMM_LOST) for point in points)
        return samples


def _birth_death_sequence(payload):
    for metric in payload.metrics:
        if metric.name == BIRTH_DEATH_SEQUENCE_METRIC:
            return metric.long_value if metric.HasField("long_value") else metric.int_value
    return None
