"""MQTT payload decoding, point validation, and the MQTT driver against the real Mosquitto on loopback."""

import asyncio
import logging
from datetime import datetime, timezone

import paho.mqtt.publish as publish
import pytest
from django.core.exceptions import ValidationError

from apps.protocols.drivers.base import DeviceUnreachable, WriteRejected
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.models import Device, Point
from apps.protocols.mqtt.payloads import decode_message
from apps.sensors.quality import Quality
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory
from tests.protocols.conftest import MQTT_BROKER

RECEIVED = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
T0_EPOCH = 1767607200


def mqtt_device(port=MQTT_BROKER[1], **fields):
    fields.setdefault("client_id", "")
    return Device(id=fields.pop("id", 1), name="Broker", protocol="mqtt", host="127.0.0.1", port=port,
                  timeout=2.0, qos=1, **fields)


def mqtt_point(point_id, topic, json_path="", timestamp_path="", **fields):
    return Point(id=point_id, sensor_id=100 + point_id, topic=topic, json_path=json_path,
                 timestamp_path=timestamp_path, address=None, **fields)


def decode(payload, *points, topic="plant/boiler1/temp"):
    return decode_message(topic, payload, points, RECEIVED)


# Payloads


def test_payload_plain_number():
    decoded = decode(b" 21.5\n", mqtt_point(1, "plant/boiler1/temp"))

    assert decoded.errors == []
    assert [(s.value, s.time, s.quality) for s in decoded.samples] == [(21.5, RECEIVED, Quality.GOOD)]


def test_payload_nested_json_path_and_scaling():
    point = mqtt_point(1, "plant/+/temp", "$.boiler.supply.temp", scale=0.1, offset=1.0)

    decoded = decode(b'{"boiler": {"supply": {"temp": 215}}}', point)

    assert decoded.samples[0].value == pytest.approx(22.5)


@pytest.mark.parametrize(
    "timestamp",
    [T0_EPOCH, T0_EPOCH * 1000, f'"{T0_EPOCH}"', '"2026-01-05T10:00:00Z"', '"2026-01-05T11:00:00+01:00"'],
)
def test_payload_object_with_timestamp(timestamp):
    point = mqtt_point(1, "plant/boiler1/temp", "$.v", "$.ts")

    decoded = decode(f'{{"v": 21.5, "ts": {timestamp}}}'.encode(), point)

    assert decoded.errors == []
    assert decoded.samples[0].time == T0
    assert decoded.samples[0].time.tzinfo == timezone.utc


def test_payload_batch_with_seconds_and_milliseconds():
    point = mqtt_point(1, "plant/boiler1/temp", "$.v", "$.ts")
    payload = f'[{{"v": 1, "ts": {T0_EPOCH}}}, {{"v": 2, "ts": {(T0_EPOCH + 1) * 1000 + 500}}}]'.encode()

    decoded = decode(payload, point)

    assert [sample.value for sample in decoded.samples] == [1.0, 2.0]
    assert decoded.samples[0].time == T0
    assert decoded.samples[1].time == T0.replace(second=1, microsecond=500_000)


def test_payload_batch_of_numbers():
    decoded = decode(b"[1, 2.5, 3]", mqtt_point(1, "plant/#"))

    assert [sample.value for sample in decoded.samples] == [1.0, 2.5, 3.0]


@pytest.mark.parametrize("payload", [b"NaN", b"Infinity", b'{"v": -Infinity}'])
def test_payload_non_finite_is_bad(payload):
    point = mqtt_point(1, "plant/boiler1/temp", "$.v" if payload.startswith(b"{") else "")

    decoded = decode(payload, point)

    assert decoded.errors == []
    assert decoded.samples[0].value is None
    assert decoded.samples[0].quality == Quality.BAD_NOT_A_NUMBER


def test_payload_null_is_bad():
    decoded = decode(b'{"v": null}', mqtt_point(1, "plant/boiler1/temp", "$.v"))

    assert decoded.samples[0].value is None
    assert decoded.samples[0].quality == Quality.BAD


@pytest.mark.parametrize(
    ("payload", "json_path", "timestamp_path", "reason"),
    [
        (b"warm", "", "", "neither a number nor JSON"),
        (b"\xff\xfe", "", "", "not UTF-8"),
        (b"", "", "", "payload is empty"),
        (b'{"v": 1}', "", "", "set the point's JSON path"),
        (b'{"v": 1}', "$.w", "", "'$.w' matches nothing"),
        (b'{"v": "warm"}', "$.v", "", "'warm' is not a number"),
        (b'{"v": [1, 2]}', "$.v[*]", "", "matches 2 values"),
        (b'{"v": 1, "ts": "2026-01-05T10:00:00"}', "$.v", "$.ts", "no UTC offset"),
        (b"[]", "", "", "empty JSON array"),
        (b"[" * 3000, "", "", "nests JSON arrays or objects too deeply"),
    ],
)
def test_payload_malformed_reason(payload, json_path, timestamp_path, reason):
    decoded = decode(payload, mqtt_point(1, "plant/boiler1/temp", json_path, timestamp_path))

    assert decoded.samples == []
    assert len(decoded.errors) == 1
    assert reason in decoded.errors[0]


def test_payload_feeds_every_matching_point():
    temp = mqtt_point(1, "plant/+/state", "$.temp")
    flow = mqtt_point(2, "plant/#", "$.flow")
    other = mqtt_point(3, "plant/boiler2/state", "$.temp")

    decoded = decode(b'{"temp": 70, "flow": 12}', temp, flow, other, topic="plant/boiler1/state")

    assert {(s.sensor_id, s.value) for s in decoded.samples} == {(101, 70.0), (102, 12.0)}


def test_payload_error_of_one_point_keeps_others():
    good = mqtt_point(1, "plant/boiler1/temp", "$.temp")
    bad = mqtt_point(2, "plant/boiler1/temp", "$.missing")

    decoded = decode(b'{"temp": 70}', good, bad)

    assert [sample.sensor_id for sample in decoded.samples] == [101]
    assert "point 2 (sensor 102)" in decoded.errors[0]


# Validation


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"topic": ""}, "topic", "needs a topic filter"),
        ({"topic": "plant/#/temp"}, "topic", "'#' must be a whole level and the last one"),
        ({"topic": "plant/boiler+/temp"}, "topic", "'+' must be a whole level"),
        ({"json_path": "$.a["}, "json_path", "JSONPath '$.a[' is invalid"),
        ({"timestamp_path": "$$"}, "timestamp_path", "is invalid"),
        ({"address": 3}, "address", "only applies to Modbus"),
    ],
)
def test_mqtt_point_clean_names_field(alpha, changes, field, message):
    fields = {"topic": "plant/+/temp", "address": None, **changes}
    point = PointFactory.build(device=DeviceFactory.build(protocol="mqtt", port=1883), **fields)

    with pytest.raises(ValidationError) as caught:
        point.clean()

    assert message in " ".join(caught.value.message_dict[field])


def test_mqtt_point_clean_accepts_wildcards(alpha):
    point = PointFactory.build(device=DeviceFactory.build(protocol="mqtt"), topic="plant/+/temp/#",
                               json_path="$.values[0].v", timestamp_path="$.ts", address=None)

    point.clean()


def test_modbus_point_rejects_mqtt_fields(alpha):
    point = PointFactory.build(topic="plant/temp", address=None)

    with pytest.raises(ValidationError) as caught:
        point.clean()

    assert "only applies to MQTT" in caught.value.message_dict["topic"][0]
    assert "needs a register" in caught.value.message_dict["address"][0]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tls_cert_file": "/etc/client.pem", "tls_key_file": "/etc/client.key"}, "tls_ca_file"),
        ({"tls_ca_file": "/etc/ca.pem", "tls_cert_file": "/etc/client.pem"}, "tls_key_file"),
        ({"password": "secret"}, "username"),
    ],
)
def test_mqtt_device_clean(alpha, fields, field):
    device = DeviceFactory.build(protocol="mqtt", **fields)

    with pytest.raises(ValidationError) as caught:
        device.clean()

    assert field in caught.value.message_dict


# Driver against Mosquitto


class Collector:
    """Collects delivered samples and lets a test wait until enough have arrived."""

    def __init__(self):
        self.samples = []
        self.changed = asyncio.Event()

    def __call__(self, samples):
        self.samples.extend(samples)
        self.changed.set()

    async def wait_for(self, count, timeout=10):
        async with asyncio.timeout(timeout):
            while len(self.samples) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.samples


async def publish_messages(messages):
    """Publish (topic, payload) pairs with QoS 1 to the shared broker and wait for the acknowledgements."""
    await asyncio.to_thread(
        publish.multiple, [{"topic": topic, "payload": payload, "qos": 1} for topic, payload in messages],
        hostname=MQTT_BROKER[0], port=MQTT_BROKER[1],
    )


async def start_driver(driver, points, collector):
    task = asyncio.create_task(driver.run(points, collector))
    async with asyncio.timeout(10):
        while not driver.connected:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return task


async def stop_driver(driver, task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await driver.close()


@pytest.mark.asyncio
async def test_driver_receives_wildcard_topics(topic_prefix):
    driver = MqttDriver(mqtt_device(client_id=f"tc-{topic_prefix[-30:]}"), schema="alpha")
    points = [mqtt_point(1, f"{topic_prefix}/+/temp", "$.v", "$.ts"), mqtt_point(2, f"{topic_prefix}/#")]
    collector = Collector()
    task = await start_driver(driver, points, collector)

    await publish_messages([(f"{topic_prefix}/boiler1/temp", f'{{"v": 71.5, "ts": {T0_EPOCH * 1000}}}')])
    samples = await collector.wait_for(1)
    await stop_driver(driver, task)

    assert [(s.sensor_id, s.value, s.time) for s in samples] == [(101, 71.5, T0)]


@pytest.mark.asyncio
async def test_malformed_payload_counted_and_client_continues(topic_prefix, caplog):
    caplog.set_level(logging.WARNING, logger="apps.protocols.drivers.mqtt")
    driver = MqttDriver(mqtt_device(id=7, client_id=f"tc-{topic_prefix[-30:]}"), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [mqtt_point(1, f"{topic_prefix}/temp")], collector)

    await publish_messages([(f"{topic_prefix}/temp", "warm"), (f"{topic_prefix}/temp", "NaN"),
                            (f"{topic_prefix}/temp", "22.5")])
    samples = await collector.wait_for(2)
    await stop_driver(driver, task)

    assert driver.malformed_count == 1
    assert f"device 7: malformed MQTT payload on {topic_prefix}/temp (1 so far)" in caplog.text
    assert "'warm' is neither a number nor JSON" in caplog.text
    assert samples[0].quality == Quality.BAD_NOT_A_NUMBER
    assert samples[1].value == 22.5


@pytest.mark.asyncio
async def test_deeply_nested_payload_keeps_client_running(topic_prefix):
    driver = MqttDriver(mqtt_device(id=8, client_id=f"tc-{topic_prefix[-30:]}"), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [mqtt_point(1, f"{topic_prefix}/temp")], collector)

    await publish_messages([(f"{topic_prefix}/temp", "[" * 3000), (f"{topic_prefix}/temp", "42")])
    samples = await collector.wait_for(1)
    await stop_driver(driver, task)

    assert driver.malformed_count == 1
    assert samples[0].value == 42


@pytest.mark.asyncio
async def test_persistent_session_keeps_qos1_messages(topic_prefix):
    device = mqtt_device(client_id=f"tc-{topic_prefix[-30:]}")
    points = [mqtt_point(1, f"{topic_prefix}/temp")]
    first = MqttDriver(device, schema="alpha")
    task = await start_driver(first, points, Collector())
    await stop_driver(first, task)

    await publish_messages([(f"{topic_prefix}/temp", "30.5")])
    second = MqttDriver(device, schema="alpha")
    collector = Collector()
    task = await start_driver(second, points, collector)
    samples = await collector.wait_for(1)
    await stop_driver(second, task)

    assert samples[0].value == 30.5


@pytest.mark.asyncio
async def test_retained_message_after_reconnect_is_same_event(topic_prefix):
    device = mqtt_device(id=31, client_id=f"tc-{topic_prefix[-30:]}")
    points = [mqtt_point(1, f"{topic_prefix}/status/#")]
    topic = f"{topic_prefix}/status/boiler1"

    async def received_once():
        driver = MqttDriver(device, schema="alpha")
        collector = Collector()
        task = await start_driver(driver, points, collector)
        samples = await collector.wait_for(1)
        await stop_driver(driver, task)
        return samples[0]

    await asyncio.to_thread(publish.single, topic, "0", qos=1, retain=True, hostname=MQTT_BROKER[0],
                            port=MQTT_BROKER[1])
    try:
        first = await received_once()
        again = await received_once()
        await asyncio.to_thread(publish.single, topic, "1", qos=1, retain=True, hostname=MQTT_BROKER[0],
                                port=MQTT_BROKER[1])
        changed = await received_once()
        other_device = MqttDriver(mqtt_device(id=32, client_id=f"tc2-{topic_prefix[-30:]}"), schema="alpha")
        collector = Collector()
        task = await start_driver(other_device, points, collector)
        [seen_by_other] = await collector.wait_for(1)
        await stop_driver(other_device, task)
    finally:
        # An empty retained message removes the retained copy from the broker.
        await asyncio.to_thread(publish.single, topic, b"", qos=1, retain=True, hostname=MQTT_BROKER[0],
                                port=MQTT_BROKER[1])

    assert first.value == 0.0
    assert again.value == 0.0
    assert again.time == first.time
    assert changed.value == 1.0
    assert changed.time > first.time
    assert seen_by_other.value == 1.0
    assert seen_by_other.time > changed.time


@pytest.mark.asyncio
async def test_read_returns_latest_values(topic_prefix):
    driver = MqttDriver(mqtt_device(client_id=f"tc-{topic_prefix[-30:]}"), schema="alpha")
    received, silent = mqtt_point(1, f"{topic_prefix}/a"), mqtt_point(2, f"{topic_prefix}/b")
    collector = Collector()
    task = await start_driver(driver, [received, silent], collector)

    await publish_messages([(f"{topic_prefix}/a", "1"), (f"{topic_prefix}/a", "2")])
    await collector.wait_for(2)
    samples = await driver.read([received, silent])
    await stop_driver(driver, task)

    assert samples[0].value == 2.0
    assert samples[1].quality == Quality.BAD
    assert "no message received" in driver.point_errors[silent.pk]


@pytest.mark.asyncio
async def test_driver_unreachable_broker():
    driver = MqttDriver(mqtt_device(port=free_port()), schema="alpha")

    with pytest.raises(DeviceUnreachable, match="Cannot connect to MQTT broker 127.0.0.1"):
        await driver.run([mqtt_point(1, "a/b")], Collector())
    await driver.close()


@pytest.mark.asyncio
async def test_driver_raises_when_broker_stops(private_broker):
    driver = MqttDriver(mqtt_device(port=private_broker.port), schema="alpha")
    task = await start_driver(driver, [mqtt_point(1, "a/b")], Collector())

    private_broker.stop()

    with pytest.raises(DeviceUnreachable, match="lost"):
        async with asyncio.timeout(10):
            await task
    await driver.close()
    assert not driver.connected


@pytest.mark.asyncio
async def test_mqtt_write_rejected():
    with pytest.raises(WriteRejected, match="takes no setpoints"):
        await MqttDriver(mqtt_device()).write(mqtt_point(1, "a/b"), 1)


@pytest.mark.asyncio
async def test_driver_tls_with_client_certificate(tls_broker):
    broker, files = tls_broker
    device = mqtt_device(port=broker.port, client_id="tc-tls-subscriber", tls_ca_file=str(files["ca"]),
                         tls_cert_file=str(files["client"]), tls_key_file=str(files["client_key"]))
    driver = MqttDriver(device, schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [mqtt_point(1, "plant/temp")], collector)

    publisher = MqttDriver(mqtt_device(port=broker.port, client_id="tc-tls-publisher", tls_ca_file=str(files["ca"]),
                                       tls_cert_file=str(files["client"]), tls_key_file=str(files["client_key"])),
                           schema="alpha")
    await publisher.connect()
    await asyncio.to_thread(lambda: publisher.client.publish("plant/temp", "19.5", qos=1).wait_for_publish(5))
    samples = await collector.wait_for(1)
    await publisher.close()
    await stop_driver(driver, task)

    assert samples[0].value == 19.5


@pytest.mark.asyncio
async def test_driver_tls_without_client_certificate_fails(tls_broker):
    broker, files = tls_broker
    driver = MqttDriver(mqtt_device(port=broker.port, tls_ca_file=str(files["ca"])), schema="alpha")

    with pytest.raises(DeviceUnreachable):
        await driver.run([mqtt_point(1, "plant/temp")], Collector())
    await driver.close()
