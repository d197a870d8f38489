"""DNP3 flag mapping, and the DNP3 master driver against a yadnp3 outstation on loopback."""

import asyncio
import logging
from datetime import datetime, timezone

import opendnp3
import pytest
from django.core.exceptions import ValidationError

from apps.protocols.dnp3.values import measurement_time, quality_of, to_sample
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.dnp3 import Dnp3Driver
from apps.protocols.models import Device, Point
from apps.protocols.profiles import parse_profile
from apps.sensors.quality import Quality
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.conftest import Dnp3Outstation
from tests.protocols.test_gateway import eventually, fast_gateway, readings_in, run_gateway_during
from tests.protocols.test_mqtt import Collector

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
RECEIVED = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("point_type", "flags", "quality"),
    [
        ("analog_input", 0x01, Quality.GOOD),
        ("analog_input", 0x00, Quality.BAD),
        ("analog_input", 0x03, Quality.BAD),
        ("analog_input", 0x05, Quality.BAD_COMM_LOST),
        ("analog_input", 0x21, Quality.BAD_OUT_OF_RANGE),
        ("analog_input", 0x41, Quality.UNCERTAIN_SENSOR_CAL),
        ("analog_input", 0x09, Quality.UNCERTAIN),
        ("analog_input", 0x11, Quality.UNCERTAIN),
        ("binary_input", 0x81, Quality.GOOD),
        ("binary_input", 0x01, Quality.GOOD),
        ("binary_input", 0x21, Quality.UNCERTAIN),
        ("binary_input", 0x80, Quality.BAD),
        ("counter", 0x41, Quality.UNCERTAIN),
        ("counter", 0x21, Quality.GOOD),
    ],
)
def test_flags_quality(point_type, flags, quality):
    assert quality_of(point_type, flags) == quality


def test_binary_state_bit_is_value():
    point = Point(id=1, sensor_id=101)

    on = to_sample(point, "binary_input", True, 0x81, RECEIVED).sample
    off = to_sample(point, "binary_input", False, 0x01, RECEIVED).sample

    assert (on.value, on.quality) == (1.0, Quality.GOOD)
    assert (off.value, off.quality) == (0.0, Quality.GOOD)


def test_double_bit_states():
    point = Point(id=1, sensor_id=101)

    assert to_sample(point, "double_bit_binary", 2, 0x01, RECEIVED).sample.value == 1.0
    assert to_sample(point, "double_bit_binary", 1, 0x01, RECEIVED).sample.value == 0.0
    assert to_sample(point, "double_bit_binary", 0, 0x01, RECEIVED).sample.quality == Quality.BAD


def test_measurement_time():
    assert measurement_time(int(T0.timestamp() * 1000), True, RECEIVED) == T0
    assert measurement_time(int(T0.timestamp() * 1000), False, RECEIVED) == RECEIVED
    assert measurement_time(0, True, RECEIVED) == RECEIVED


# Driver against the outstation


def dnp3_device(outstation, **fields):
    return Device(id=1, name="RTU", protocol="dnp3", host="127.0.0.1", port=outstation.port, timeout=2.0,
                  dnp3_master_address=Dnp3Outstation.MASTER_ADDRESS,
                  dnp3_outstation_address=Dnp3Outstation.OUTSTATION_ADDRESS, **fields)


def dnp3_point(point_id, point_type, index, **fields):
    return Point(id=point_id, sensor_id=100 + point_id, dnp3_type=point_type, dnp3_index=index, address=None,
                 **fields)


async def until(condition, timeout=10):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def values_of(collector, sensor_id):
    return [sample.value for sample in collector.samples if sample.sensor_id == sensor_id]


POINTS = [
    dnp3_point(1, "analog_input", 0),
    dnp3_point(2, "binary_input", 1),
    dnp3_point(3, "counter", 2),
]


async def start(driver, points, collector):
    task = asyncio.create_task(driver.run(points, collector))
    try:
        await until(lambda: len({sample.sensor_id for sample in collector.samples}) == len(points))
    except TimeoutError:
        if task.done():
            task.result()
        raise
    return task


async def stop(driver, task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await driver.close()


@pytest.mark.asyncio
async def test_integrity_poll_reads_floats_untruncated(dnp3_outstation):
    dnp3_outstation.update(
        (opendnp3.Analog(12.75, opendnp3.Flags(0x01)), 0),
        (opendnp3.Binary(True, opendnp3.Flags(0x81)), 1),
        (opendnp3.Counter(42, opendnp3.Flags(0x01)), 2),
    )
    driver = Dnp3Driver(dnp3_device(dnp3_outstation), schema="alpha")
    collector = Collector()

    task = await start(driver, POINTS, collector)
    await stop(driver, task)

    assert set(values_of(collector, 101)) == {12.75}
    assert set(values_of(collector, 102)) == {1.0}
    assert set(values_of(collector, 103)) == {42.0}
    assert all(sample.quality == Quality.GOOD for sample in collector.samples)


@pytest.mark.asyncio
async def test_integrity_poll_maps_flags(dnp3_outstation):
    dnp3_outstation.update(
        (opendnp3.Analog(3.5, opendnp3.Flags(0x05)), 0),
        (opendnp3.Binary(True, opendnp3.Flags(0xA1)), 1),
        (opendnp3.Counter(7, opendnp3.Flags(0x41)), 2),
    )
    driver = Dnp3Driver(dnp3_device(dnp3_outstation), schema="alpha")
    collector = Collector()

    task = await start(driver, POINTS, collector)
    await stop(driver, task)

    latest = {sample.sensor_id: sample for sample in collector.samples}
    assert (latest[101].value, latest[101].quality) == (None, Quality.BAD_COMM_LOST)
    assert (latest[102].value, latest[102].quality) == (1.0, Quality.UNCERTAIN)
    assert (latest[103].value, latest[103].quality) == (7.0, Quality.UNCERTAIN)


@pytest.mark.asyncio
async def test_unsolicited_events_and_flags(dnp3_outstation):
    dnp3_outstation.update((opendnp3.Analog(1.0, opendnp3.Flags(0x01)), 0))
    driver = Dnp3Driver(dnp3_device(dnp3_outstation), schema="alpha")
    collector = Collector()
    task = await start(driver, POINTS, collector)
    before = len(collector.samples)

    dnp3_outstation.update(
        (opendnp3.Analog(20.0, opendnp3.Flags(0x01)), 0),
        (opendnp3.Binary(False, opendnp3.Flags(0x11)), 1),
    )
    await until(lambda: len(collector.samples) >= before + 2)
    dnp3_outstation.update((opendnp3.Analog(21.0, opendnp3.Flags(0x21)), 0))
    await until(lambda: len(collector.samples) >= before + 3)
    await stop(driver, task)

    events = collector.samples[before:]
    by_sensor = {}
    for sample in events:
        by_sensor.setdefault(sample.sensor_id, []).append(sample)
    assert (by_sensor[101][0].value, by_sensor[101][0].quality) == (20.0, Quality.GOOD)
    assert (by_sensor[102][0].value, by_sensor[102][0].quality) == (0.0, Quality.UNCERTAIN)
    assert (by_sensor[101][1].value, by_sensor[101][1].quality) == (None, Quality.BAD_OUT_OF_RANGE)


@pytest.mark.asyncio
async def test_restart_iin_clears_syncs_time_and_polls(dnp3_outstation, caplog):
    caplog.set_level(logging.DEBUG, logger="apps.protocols.drivers.dnp3")
    dnp3_outstation.update((opendnp3.Analog(12.75, opendnp3.Flags(0x01)), 0))
    driver = Dnp3Driver(dnp3_device(dnp3_outstation, time_sync=True), schema="alpha")
    collector = Collector()
    task = await start(driver, POINTS, collector)
    await until(lambda: "DNP3 task USER_TASK SUCCESS" in caplog.text)
    restarts_before = driver.restart_count
    caplog.clear()

    dnp3_outstation.restart(need_time=True)
    dnp3_outstation.update((opendnp3.Analog(13.0, opendnp3.Flags(0x01)), 0))
    await until(lambda: "DNP3 task USER_TASK SUCCESS" in caplog.text)
    await stop(driver, task)

    assert driver.restart_count == restarts_before + 1
    assert caplog.text.count("restarted (IIN1.7)") == 1
    assert "DNP3 task CLEAR_RESTART SUCCESS" in caplog.text
    assert "DNP3 task LAN_TIME_SYNC SUCCESS" in caplog.text
    assert dnp3_outstation.application.time_written
    assert "DNP3 task STARTUP_INTEGRITY_POLL SUCCESS" in caplog.text
    assert values_of(collector, 101)[-1] == 13.0


@pytest.mark.asyncio
async def test_unreachable_outstation():
    device = Device(id=1, name="Gone", protocol="dnp3", host="127.0.0.1", port=free_port(), timeout=1.0)
    driver = Dnp3Driver(device, schema="alpha")

    with pytest.raises(DeviceUnreachable, match="Cannot connect to DNP3 outstation"):
        await driver.run(POINTS, Collector())
    await driver.close()


@pytest.mark.asyncio
async def test_outstation_stop_raises(dnp3_outstation):
    driver = Dnp3Driver(dnp3_device(dnp3_outstation), schema="alpha")
    task = await start(driver, POINTS, Collector())

    await asyncio.to_thread(dnp3_outstation.stop)

    with pytest.raises(DeviceUnreachable, match="lost"):
        async with asyncio.timeout(10):
            await task
    await driver.close()


def test_gateway_stores_dnp3_values(alpha, dnp3_outstation):
    dnp3_outstation.update((opendnp3.Analog(55.5, opendnp3.Flags(0x01)), 3))
    device = DeviceFactory(protocol="dnp3", port=dnp3_outstation.port, timeout=2.0,
                           dnp3_master_address=Dnp3Outstation.MASTER_ADDRESS,
                           dnp3_outstation_address=Dnp3Outstation.OUTSTATION_ADDRESS)
    point = PointFactory(device=device, address=None, dnp3_type="analog_input", dnp3_index=3,
                         sensor=SensorFactory(minimum=0, maximum=100))
    gateway = fast_gateway()

    async def scenario():
        await eventually(lambda: readings_in("alpha", point.sensor_id))
        await eventually(lambda: Device.objects.get(pk=device.pk).last_seen is not None)

    run_gateway_during(gateway, scenario)

    assert set(readings_in("alpha", point.sensor_id)) == {(55.5, Quality.GOOD)}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"dnp3_type": "", "dnp3_index": 0}, "dnp3_type", "needs a point type"),
        ({"dnp3_type": "analog_input", "dnp3_index": None}, "dnp3_index", "needs the point index"),
        ({"dnp3_type": "analog_input", "dnp3_index": 0, "address": 4}, "address", "only applies to Modbus"),
    ],
)
def test_dnp3_point_clean_names_field(alpha, fields, field, message):
    fields = {"address": None, **fields}
    point = PointFactory.build(device=DeviceFactory.build(protocol="dnp3"), **fields)

    with pytest.raises(ValidationError) as caught:
        point.clean()

    assert message in " ".join(caught.value.message_dict[field])


def test_dnp3_fields_rejected_on_modbus_point(alpha):
    with pytest.raises(ValidationError) as caught:
        PointFactory.build(dnp3_type="analog_input", dnp3_index=1).clean()

    assert "only apply to DNP3" in caught.value.message_dict["dnp3_type"][0]


def test_dnp3_profile_parses():
    profile = parse_profile(
        "profile: 1\nname: RTU\nprotocol: dnp3\npoints:\n"
        "  - {key: flow, name: Flow, quantity: flow, dnp3_type: analog_input, dnp3_index: 3}\n"
    )

    assert profile.points[0]["point"] == {"dnp3_type": "analog_input", "dnp3_index": 3}
