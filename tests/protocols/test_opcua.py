"""OPC UA status mapping, node id validation, the driver against an asyncua server, and the gateway across a restart."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from asyncua import ua
from django.core.exceptions import ValidationError

from apps.accounts.choices import Role
from apps.protocols.choices import DeviceStatus
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.models import Device, Point
from apps.protocols.opcua.values import quality_of, to_sample
from apps.protocols.services import InvalidSetpoint, write_setpoint
from apps.sensors.quality import Quality
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.test_gateway import eventually, fast_gateway, readings_in, run_gateway_during
from tests.protocols.test_mqtt import Collector

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
RECEIVED = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def opcua_point(point_id, node_id, **fields):
    return Point(id=point_id, sensor_id=100 + point_id, node_id=node_id, address=None, **fields)


def data_value(value=21.5, status=ua.StatusCodes.Good, source=None, server=None, variant_type=ua.VariantType.Double):
    return ua.DataValue(
        ua.Variant(value, variant_type), StatusCode=ua.StatusCode(status), SourceTimestamp=source,
        ServerTimestamp=server,
    )


# Status codes and timestamps


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.Good | 0x0400, Quality.GOOD),
        (ua.StatusCodes.GoodLocalOverride, Quality.GOOD),
        (ua.StatusCodes.Uncertain, Quality.UNCERTAIN),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN_LAST_USABLE),
        (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN_SENSOR_CAL),
        (ua.StatusCodes.UncertainEngineeringUnitsExceeded, Quality.UNCERTAIN),
        (ua.StatusCodes.Bad, Quality.BAD),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD_SENSOR_FAILURE),
        (ua.StatusCodes.BadCommunicationError, Quality.BAD_COMM_LOST),
        (ua.StatusCodes.BadOutOfRange, Quality.BAD_OUT_OF_RANGE),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD_CONFIGURATION),
        (0xC0000000, Quality.BAD),
        (0xC0AB0000, Quality.BAD),
    ],
)
def test_status_code_quality(code, quality):
    assert quality_of(code) == quality


def test_uncertain_keeps_value():
    conversion = to_sample(opcua_point(1, "ns=2;i=1"), data_value(21.5, ua.StatusCodes.UncertainLastUsableValue))

    assert conversion.sample.value == 21.5
    assert conversion.sample.quality == Quality.UNCERTAIN_LAST_USABLE


@pytest.mark.parametrize("code", [ua.StatusCodes.BadSensorFailure, 0xC0000000])
def test_bad_drops_value(code):
    conversion = to_sample(opcua_point(1, "ns=2;i=1"), data_value(21.5, code))

    assert conversion.sample.value is None
    assert conversion.sample.quality >= Quality.BAD
    assert conversion.reason.startswith("status ")


def test_source_timestamp_naive_is_utc():
    sample = to_sample(opcua_point(1, "ns=2;i=1"), data_value(source=T0.replace(tzinfo=None)), RECEIVED).sample

    assert sample.time == T0
    assert sample.time.tzinfo == timezone.utc


def test_source_timestamp_with_offset_becomes_utc():
    local = T0.astimezone(timezone(timedelta(hours=2)))

    sample = to_sample(opcua_point(1, "ns=2;i=1"), data_value(source=local), RECEIVED).sample

    assert sample.time == T0
    assert sample.time.utcoffset() == timedelta(0)


def test_server_timestamp_when_no_source_timestamp():
    sample = to_sample(opcua_point(1, "ns=2;i=1"), data_value(server=T0.replace(tzinfo=None)), RECEIVED).sample

    assert sample.time == T0


def test_arrival_time_when_no_timestamps():
    assert to_sample(opcua_point(1, "ns=2;i=1"), data_value(), RECEIVED).sample.time == RECEIVED


def test_scaling_and_booleans():
    point = opcua_point(1, "ns=2;i=1", scale=0.1, offset=-10)

    assert to_sample(point, data_value(215)).sample.value == pytest.approx(11.5)
    assert to_sample(opcua_point(2, "ns=2;i=2"), data_value(True, variant_type=ua.VariantType.Boolean)).sample.value == 1.0


def test_non_numeric_value_is_configuration_error():
    conversion = to_sample(opcua_point(1, "ns=2;i=1"), data_value("B-100", variant_type=ua.VariantType.String))

    assert conversion.sample.quality == Quality.BAD_CONFIGURATION
    assert "'B-100' of type str is not a number" in conversion.reason


# Validation


@pytest.mark.parametrize(
    ("node_id", "message"),
    [
        ("", "needs a node id"),
        ("Boiler1.SupplyTemp", "is invalid"),
        ("ns=x;i=1", "is invalid"),
        ("ns=2;i=abc", "is invalid"),
        ("ns=70000;i=1", "namespace index 70000"),
        ("ns=2;s=", "empty string identifier"),
    ],
)
def test_opcua_point_node_id_validated(alpha, node_id, message):
    point = PointFactory.build(device=DeviceFactory.build(protocol="opcua"), node_id=node_id, address=None)

    with pytest.raises(ValidationError) as caught:
        point.clean()

    assert message in " ".join(caught.value.message_dict["node_id"])


@pytest.mark.parametrize("node_id", ["ns=2;s=Boiler1.SupplyTemp", "ns=3;i=1001", "i=2258",
                                     "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a"])
def test_opcua_point_accepts_node_ids(alpha, node_id):
    PointFactory.build(device=DeviceFactory.build(protocol="opcua"), node_id=node_id, address=None).clean()


def test_node_id_rejected_on_modbus_point(alpha):
    with pytest.raises(ValidationError) as caught:
        PointFactory.build(node_id="ns=2;i=1").clean()

    assert "only applies to OPC UA" in caught.value.message_dict["node_id"][0]


def test_api_rejects_invalid_node_id(alpha_api):
    device = DeviceFactory(protocol="opcua", port=4840)

    response = alpha_api.post(
        "/api/v1/points/", {"device": device.pk, "sensor": SensorFactory().pk, "node_id": "Boiler1.SupplyTemp"},
        format="json",
    )

    assert response.status_code == 400
    assert "is invalid" in str(response.data["node_id"])


# Driver against the asyncua server


def opcua_device(server, **fields):
    return Device(id=fields.pop("id", 1), name="OPC UA server", protocol="opcua", host="127.0.0.1",
                  port=server.port, endpoint_path=server.endpoint_path, timeout=3.0, **fields)


async def start_driver(driver, points, collector, count):
    task = asyncio.create_task(driver.run(points, collector))
    try:
        await collector.wait_for(count)
    except TimeoutError:
        if task.done():
            task.result()
        raise
    return task


async def stop_driver(driver, task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await driver.close()


@pytest.mark.asyncio
async def test_subscription_delivers_status_and_source_time(opcua_server):
    temp = opcua_point(1, opcua_server.node_id("Boiler1.SupplyTemp"), sampling_interval_ms=50)
    driver = OpcUaDriver(opcua_device(opcua_server), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [temp], collector, 1)

    await asyncio.to_thread(opcua_server.write, "Boiler1.SupplyTemp", 71.0, ua.StatusCodes.UncertainLastUsableValue, T0)
    await collector.wait_for(2)
    await asyncio.to_thread(opcua_server.write, "Boiler1.SupplyTemp", 72.0, ua.StatusCodes.BadSensorFailure, T0)
    samples = await collector.wait_for(3)
    await stop_driver(driver, task)

    assert samples[0].value == 70.0
    assert samples[0].quality == Quality.GOOD
    assert (samples[1].value, samples[1].quality, samples[1].time) == (71.0, Quality.UNCERTAIN_LAST_USABLE, T0)
    assert (samples[2].value, samples[2].quality) == (None, Quality.BAD_SENSOR_FAILURE)


@pytest.mark.asyncio
async def test_deadband_suppresses_small_changes(opcua_server):
    point = opcua_point(1, opcua_server.node_id("Boiler1.ReturnTemp"), sampling_interval_ms=50, deadband=5.0)
    driver = OpcUaDriver(opcua_device(opcua_server), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [point], collector, 1)

    await asyncio.to_thread(opcua_server.write, "Boiler1.ReturnTemp", 51.0)
    await asyncio.to_thread(opcua_server.write, "Boiler1.ReturnTemp", 60.0)
    samples = await collector.wait_for(2)
    await stop_driver(driver, task)

    assert [sample.value for sample in samples] == [50.0, 60.0]


@pytest.mark.asyncio
async def test_one_monitored_item_per_point(opcua_server):
    points = [
        opcua_point(1, opcua_server.node_id("Boiler1.SupplyTemp")),
        opcua_point(2, opcua_server.node_id("Boiler1.ReturnTemp"), sampling_interval_ms=250),
        opcua_point(3, opcua_server.node_id("Boiler1.Running")),
    ]
    driver = OpcUaDriver(opcua_device(opcua_server), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, points, collector, 3)

    count = await asyncio.to_thread(opcua_server.monitored_item_count)
    await stop_driver(driver, task)

    assert count == 3
    assert {sample.sensor_id: sample.value for sample in collector.samples} == {101: 70.0, 102: 50.0, 103: 1.0}


@pytest.mark.asyncio
async def test_unknown_node_is_bad_and_others_subscribe(opcua_server):
    missing = opcua_point(1, f"ns={opcua_server.namespace_index};s=Boiler1.Missing")
    temp = opcua_point(2, opcua_server.node_id("Boiler1.SupplyTemp"))
    driver = OpcUaDriver(opcua_device(opcua_server), schema="alpha")
    collector = Collector()
    task = await start_driver(driver, [missing, temp], collector, 2)
    await stop_driver(driver, task)

    by_sensor = {sample.sensor_id: sample for sample in collector.samples}
    assert by_sensor[101].quality == Quality.BAD_CONFIGURATION
    assert by_sensor[102].value == 70.0


@pytest.mark.asyncio
async def test_driver_unreachable_server():
    device = Device(id=1, name="Gone", protocol="opcua", host="127.0.0.1", port=free_port(), timeout=1.0)

    with pytest.raises(DeviceUnreachable, match="Cannot connect to OPC UA server opc.tcp://127.0.0.1"):
        await OpcUaDriver(device).run([opcua_point(1, "ns=2;i=1")], Collector())


# Setpoints


@pytest.fixture
def operator(alpha):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("opcua-operator", password="Operator-password-4711", role=Role.OPERATOR)


def saved_opcua_point(server, name, **fields):
    device = DeviceFactory(protocol="opcua", port=server.port, endpoint_path=server.endpoint_path, timeout=3.0)
    fields.setdefault("sensor", SensorFactory(minimum=0, maximum=100))
    return PointFactory(device=device, node_id=server.node_id(name), address=None, **fields)


def test_write_setpoint_to_opcua_double(operator, opcua_server):
    point = saved_opcua_point(opcua_server, "Boiler1.Setpoint")

    result = write_setpoint(point, 65.5, actor=operator)

    assert opcua_server.read("Boiler1.Setpoint") == 65.5
    assert result.read_back == 65.5


def test_write_setpoint_to_opcua_float_and_scaled_int(operator, opcua_server):
    level = saved_opcua_point(opcua_server, "Boiler1.Level")
    starts = saved_opcua_point(opcua_server, "Boiler1.Starts", scale=0.5)

    level_result = write_setpoint(level, 0.3, actor=operator)
    starts_result = write_setpoint(starts, 7.5, actor=operator)

    assert level_result.read_back == pytest.approx(0.3, rel=1e-7)
    assert level_result.read_back == level_result.written
    assert opcua_server.read("Boiler1.Starts") == 15
    assert starts_result.read_back == 7.5


def test_write_setpoint_to_opcua_string_is_invalid(operator, opcua_server):
    point = saved_opcua_point(opcua_server, "Boiler1.Model")

    with pytest.raises(InvalidSetpoint, match="data type String"):
        write_setpoint(point, 5, actor=operator)


# Gateway across a server restart


def last_reading(sensor_id):
    readings = readings_in("alpha", sensor_id)
    return readings[-1] if readings else None


def test_gateway_rebuilds_subscription_after_server_restart(alpha, restartable_opcua_server):
    device = DeviceFactory(protocol="opcua", port=restartable_opcua_server.port, endpoint_path=restartable_opcua_server.endpoint_path,
                           timeout=2.0)
    temp = PointFactory(device=device, node_id=restartable_opcua_server.node_id("Boiler1.SupplyTemp"), address=None,
                        sampling_interval_ms=50, sensor=SensorFactory(minimum=0, maximum=100))
    level = PointFactory(device=device, node_id=restartable_opcua_server.node_id("Boiler1.Level"), address=None,
                         sampling_interval_ms=50, sensor=SensorFactory(minimum=0, maximum=1))
    gateway = fast_gateway(max_backoff=0.5)
    outcome = {}

    async def scenario():
        await eventually(lambda: readings_in("alpha", temp.sensor_id) and readings_in("alpha", level.sensor_id))

        await asyncio.to_thread(restartable_opcua_server.stop)

        def comm_lost():
            return (last_reading(temp.sensor_id) == (None, Quality.BAD_COMM_LOST)
                    and Device.objects.get(pk=device.pk).status == DeviceStatus.OFFLINE)

        await eventually(comm_lost)

        await asyncio.to_thread(restartable_opcua_server.start)
        await eventually(lambda: last_reading(temp.sensor_id) == (70.0, Quality.GOOD), timeout=30)
        await asyncio.to_thread(restartable_opcua_server.write, "Boiler1.SupplyTemp", 75.0)
        await eventually(lambda: last_reading(temp.sensor_id) == (75.0, Quality.GOOD))
        outcome["monitored_items"] = await asyncio.to_thread(restartable_opcua_server.monitored_item_count)
        await eventually(lambda: Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE)

    run_gateway_during(gateway, scenario)

    assert outcome["monitored_items"] == 2
    assert readings_in("alpha", temp.sensor_id) == [
        (70.0, Quality.GOOD), (None, Quality.BAD_COMM_LOST), (70.0, Quality.GOOD), (75.0, Quality.GOOD),
    ]
    assert readings_in("alpha", level.sensor_id)[1] == (None, Quality.BAD_COMM_LOST)
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE


@pytest.mark.asyncio
async def test_username_and_password(password_opcua_server):
    point = opcua_point(1, password_opcua_server.node_id("Boiler1.SupplyTemp"))
    driver = OpcUaDriver(opcua_device(password_opcua_server, username="operator", password="Secret-4711"))
    collector = Collector()

    task = await start_driver(driver, [point], collector, 1)
    await stop_driver(driver, task)

    assert collector.samples[0].value == 70.0


@pytest.mark.asyncio
async def test_wrong_password_is_unreachable(password_opcua_server):
    driver = OpcUaDriver(opcua_device(password_opcua_server, username="operator", password="wrong"))

    with pytest.raises(DeviceUnreachable, match="Cannot connect to OPC UA server"):
        await driver.run([opcua_point(1, password_opcua_server.node_id("Boiler1.SupplyTemp"))], Collector())
    await driver.close()
