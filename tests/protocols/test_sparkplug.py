"""Sparkplug B: payload decoding, aliases from births, sequence checks with rebirth requests, deaths as comm lost."""

import asyncio
import math
import uuid
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest
from django.core.exceptions import ValidationError
from paho.mqtt import publish
from paho.mqtt.enums import CallbackAPIVersion

from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.models import Device, Point
from apps.protocols.mqtt.sparkplug import (
    DataType,
    Payload,
    SparkplugSession,
    metric_value,
    parse_topic,
    rebirth_request,
)
from apps.sensors.quality import Quality
from tests.factories import DeviceFactory, SensorFactory
from tests.protocols.conftest import MQTT_BROKER
from tests.protocols.test_mqtt import Collector, start_driver, stop_driver

RECEIVED = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
T0_MS = 1767607200000  # 2026-01-05T10:00:00Z


def sparkplug_point(point_id, topic, metric, **fields):
    return Point(id=point_id, sensor_id=100 + point_id, topic=topic, sparkplug_metric=metric, address=None, **fields)


def payload(seq, *metrics, timestamp=T0_MS):
    """Encode a payload; each metric is a dict of Metric fields."""
    message = Payload(timestamp=timestamp)
    if seq is not None:
        message.seq = seq
    for metric in metrics:
        message.metrics.add(**metric)
    return message.SerializeToString()


def double(name=None, alias=None, value=0.0, **fields):
    metric = {"datatype": DataType.DOUBLE, "double_value": value, **fields}
    if name is not None:
        metric["name"] = name
    if alias is not None:
        metric["alias"] = alias
    return metric


def bd_seq(value):
    return {"name": "bdSeq", "datatype": DataType.INT64, "long_value": value}


NODE = "spBv1.0/Plant/{}/Edge1"
DEVICE = "spBv1.0/Plant/{}/Edge1/Boiler1"


@pytest.fixture
def session():
    points = [
        sparkplug_point(1, "spBv1.0/Plant/Edge1/Boiler1", "Supply/Temp"),
        sparkplug_point(2, "spBv1.0/Plant/Edge1/Boiler1", "Return/Temp", scale=0.1),
        sparkplug_point(3, "spBv1.0/Plant/Edge1", "Node/Uptime"),
    ]
    return SparkplugSession(points)


def born(session):
    """Send NBIRTH (seq 0) and DBIRTH (seq 1) with aliases 1 to 3."""
    session.handle(NODE.format("NBIRTH"), payload(0, bd_seq(7), double("Node/Uptime", 3, 10.0)), RECEIVED)
    return session.handle(
        DEVICE.format("DBIRTH"),
        payload(1, double("Supply/Temp", 1, 70.5), double("Return/Temp", 2, 500.0)),
        RECEIVED,
    )


# Decoding


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ({"datatype": DataType.INT8, "int_value": 0xFF}, -1.0),
        ({"datatype": DataType.INT16, "int_value": 0x8000}, -32768.0),
        ({"datatype": DataType.INT32, "int_value": 0xFFFFFF98}, -104.0),
        ({"datatype": DataType.INT64, "long_value": 2**64 - 2}, -2.0),
        ({"datatype": DataType.UINT32, "int_value": 0x80000000}, 2147483648.0),
        ({"datatype": DataType.UINT64, "long_value": 2**40}, float(2**40)),
        ({"datatype": DataType.FLOAT, "float_value": 1.5}, 1.5),
        ({"datatype": DataType.BOOLEAN, "boolean_value": True}, 1.0),
    ],
)
def test_metric_value_by_data_type(metric, expected):
    message = Payload()
    decoded = message.metrics.add(**metric)

    assert metric_value(decoded) == (expected, Quality.GOOD, "")


@pytest.mark.parametrize(
    ("metric", "quality", "reason"),
    [
        ({"datatype": DataType.DOUBLE, "is_null": True}, Quality.BAD, "the metric is null"),
        ({"datatype": DataType.DOUBLE, "double_value": math.nan}, Quality.BAD_NOT_A_NUMBER, "is not finite"),
        ({"datatype": DataType.STRING, "string_value": "on"}, Quality.BAD_CONFIGURATION, "STRING is not numeric"),
        ({"datatype": 16}, Quality.BAD_CONFIGURATION, "data type 16 is not numeric"),
    ],
)
def test_metric_without_number_gives_reason(metric, quality, reason):
    decoded = Payload().metrics.add(**metric)

    value, bad_quality, message = metric_value(decoded)

    assert value is None
    assert bad_quality == quality
    assert reason in message


def test_parse_topic():
    assert parse_topic("spBv1.0/Plant/DDATA/Edge1/Boiler1").device == "Boiler1"
    assert parse_topic("spBv1.0/Plant/NDATA/Edge1").point_topic == "spBv1.0/Plant/Edge1"
    assert parse_topic("spBv1.0/STATE/host1") is None
    assert parse_topic("plant/boiler1/temp") is None


def test_rebirth_request_payload():
    decoded = Payload.FromString(rebirth_request(RECEIVED))

    [metric] = decoded.metrics
    assert metric.name == "Node Control/Rebirth"
    assert metric.datatype == DataType.BOOLEAN
    assert metric.boolean_value is True


# Session


def test_birth_values_become_samples(session):
    node_birth = session.handle(
        NODE.format("NBIRTH"), payload(0, bd_seq(7), double("Node/Uptime", 3, 10.0)), RECEIVED
    )
    device_birth = session.handle(
        DEVICE.format("DBIRTH"), payload(1, double("Supply/Temp", 1, 70.5), double("Return/Temp", 2, 500.0)), RECEIVED
    )

    assert [(s.sensor_id, s.value, s.quality) for s in node_birth.samples] == [(103, 10.0, Quality.GOOD)]
    assert [(s.sensor_id, s.value) for s in device_birth.samples] == [(101, 70.5), (102, 50.0)]
    assert device_birth.samples[0].time == datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    assert device_birth.errors == []


def test_data_by_alias_uses_birth_names(session):
    born(session)

    result = session.handle(
        DEVICE.format("DDATA"), payload(2, double(alias=2, value=480.0, timestamp=T0_MS + 1000)), RECEIVED
    )

    [sample] = result.samples
    assert (sample.sensor_id, sample.value) == (102, 48.0)
    assert sample.time == datetime(2026, 1, 5, 10, 0, 1, tzinfo=timezone.utc)
    assert result.rebirth_topic == ""


def test_sequence_wraps_after_255(session):
    born(session)
    for seq in range(2, 256):
        session.handle(NODE.format("NDATA"), payload(seq, double(alias=3, value=float(seq))), RECEIVED)

    result = session.handle(NODE.format("NDATA"), payload(0, double(alias=3, value=256.0)), RECEIVED)

    assert result.errors == []
    assert result.rebirth_topic == ""


def test_sequence_gap_requests_rebirth_once(session):
    born(session)

    gap = session.handle(DEVICE.format("DDATA"), payload(5, double(alias=1, value=71.0)), RECEIVED)
    second_gap = session.handle(DEVICE.format("DDATA"), payload(9, double(alias=1, value=72.0)), RECEIVED)

    assert gap.rebirth_topic == "spBv1.0/Plant/NCMD/Edge1"
    assert "sequence number 5, expected 2" in gap.errors[0]
    assert [sample.value for sample in gap.samples] == [71.0]
    assert second_gap.rebirth_topic == ""


def test_rebirth_resets_sequence_and_rebirth_request(session):
    born(session)
    session.handle(DEVICE.format("DDATA"), payload(5, double(alias=1, value=71.0)), RECEIVED)
    born(session)

    again = session.handle(DEVICE.format("DDATA"), payload(9, double(alias=1, value=72.0)), RECEIVED)

    assert again.rebirth_topic == "spBv1.0/Plant/NCMD/Edge1"


def test_data_before_birth_requests_rebirth(session):
    result = session.handle(DEVICE.format("DDATA"), payload(4, double(alias=1, value=71.0)), RECEIVED)

    assert result.samples == []
    assert result.rebirth_topic == "spBv1.0/Plant/NCMD/Edge1"
    assert "before its NBIRTH" in result.errors[0]


def test_unknown_alias_is_reported(session):
    born(session)

    result = session.handle(DEVICE.format("DDATA"), payload(2, double(alias=99, value=1.0)), RECEIVED)

    assert result.samples == []
    assert "metric alias 99 of spBv1.0/Plant/Edge1/Boiler1 is not in its birth" in result.errors


def test_device_death_marks_device_points_comm_lost(session):
    born(session)

    result = session.handle(DEVICE.format("DDEATH"), payload(2), RECEIVED)

    assert sorted((s.sensor_id, s.value, s.quality) for s in result.samples) == [
        (101, None, Quality.BAD_COMM_LOST), (102, None, Quality.BAD_COMM_LOST),
    ]


def test_node_death_marks_node_and_devices_comm_lost(session):
    born(session)

    result = session.handle(NODE.format("NDEATH"), payload(None, bd_seq(7)), RECEIVED)

    assert sorted(s.sensor_id for s in result.samples) == [101, 102, 103]
    assert {s.quality for s in result.samples} == {Quality.BAD_COMM_LOST}


def test_stale_node_death_is_ignored(session):
    born(session)

    result = session.handle(NODE.format("NDEATH"), payload(None, bd_seq(6)), RECEIVED)

    assert result.samples == []
    assert "does not match its NBIRTH bdSeq 7" in result.errors[0]


def test_null_metric_is_bad_quality(session):
    born(session)

    result = session.handle(DEVICE.format("DDATA"), payload(2, double(alias=1, is_null=True)), RECEIVED)

    [sample] = result.samples
    assert (sample.value, sample.quality) == (None, Quality.BAD)
    assert "the metric is null" in result.errors[0]


def test_garbage_payload_is_an_error(session):
    result = session.handle(DEVICE.format("DDATA"), b"\xff\xff\xff", RECEIVED)

    assert result.samples == []
    assert "not a Sparkplug B protobuf message" in result.errors[0]


# Point validation


@pytest.mark.parametrize("topic", ["spBv1.0/Plant/+/Edge1", "plant/boiler1", "spBv1.0/Plant", "spBv1.0/Plant/E/D/x"])
def test_sparkplug_point_topic_validated(alpha, topic):
    device = DeviceFactory(protocol="mqtt", port=1883)
    point = Point(device=device, sensor=SensorFactory(), topic=topic, sparkplug_metric="Supply/Temp")

    with pytest.raises(ValidationError) as caught:
        point.full_clean()

    assert "Sparkplug topic" in str(caught.value.message_dict["topic"])


def test_sparkplug_metric_rejected_on_modbus_point(alpha):
    point = Point(device=DeviceFactory(), sensor=SensorFactory(), address=0, sparkplug_metric="Supply/Temp")

    with pytest.raises(ValidationError) as caught:
        point.full_clean()

    assert "only applies to MQTT points" in str(caught.value.message_dict["sparkplug_metric"])


# Driver against Mosquitto


class CommandListener:
    """Subscribes to the group's NCMD topics on the shared broker and records the rebirth requests."""

    def __init__(self, group):
        self.received = []
        self.subscribed = asyncio.Event()
        self.arrived = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe(f"spBv1.0/{group}/NCMD/+", qos=1)
        self.client.on_subscribe = lambda *_: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.client.on_message = self._on_message
        self.client.connect(*MQTT_BROKER)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        self.received.append((message.topic, Payload.FromString(message.payload)))
        self.loop.call_soon_threadsafe(self.arrived.set)

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


async def publish_all(messages):
    await asyncio.to_thread(
        publish.multiple, [{"topic": topic, "payload": data, "qos": 1} for topic, data in messages],
        hostname=MQTT_BROKER[0], port=MQTT_BROKER[1],
    )


@pytest.mark.asyncio
async def test_driver_decodes_sparkplug_and_requests_rebirth():
    # A group of its own keeps other tests' Sparkplug messages on the shared broker apart.
    group = f"thermacore-test-{uuid.uuid4().hex[:12]}"
    node, device_topic = f"spBv1.0/{group}/{{}}/Edge1", f"spBv1.0/{group}/{{}}/Edge1/Boiler1"
    points = [sparkplug_point(1, f"spBv1.0/{group}/Edge1/Boiler1", "Supply/Temp")]
    device = Device(id=1, name="Broker", protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1], timeout=3.0,
                    client_id=f"thermacore-test-{group}")
    driver = MqttDriver(device, schema="alpha")
    collector = Collector()
    listener = CommandListener(group)
    await asyncio.wait_for(listener.subscribed.wait(), 5)
    task = await start_driver(driver, points, collector)

    await publish_all([
        (node.format("NBIRTH"), payload(0, bd_seq(1))),
        (device_topic.format("DBIRTH"), payload(1, double("Supply/Temp", 1, 70.0))),
        (device_topic.format("DDATA"), payload(2, double(alias=1, value=71.0))),
        (device_topic.format("DDATA"), payload(7, double(alias=1, value=72.0))),
        (device_topic.format("DDEATH"), payload(8)),
    ])
    await collector.wait_for(4)
    await asyncio.wait_for(listener.arrived.wait(), 5)
    await stop_driver(driver, task)
    listener.stop()

    assert [(s.value, s.quality) for s in collector.samples] == [
        (70.0, Quality.GOOD), (71.0, Quality.GOOD), (72.0, Quality.GOOD), (None, Quality.BAD_COMM_LOST),
    ]
    [(topic, command)] = listener.received
    assert topic == f"spBv1.0/{group}/NCMD/Edge1"
    assert command.metrics[0].name == "Node Control/Rebirth"
    assert driver.malformed_count == 1
