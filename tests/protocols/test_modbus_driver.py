"""The Modbus TCP driver against a real pymodbus server on loopback."""

import struct

import pytest

from apps.protocols.drivers.base import WriteRejected
from apps.protocols.drivers.modbus_tcp import ModbusTcpDriver
from apps.protocols.modbus.codec import BYTE_ORDERS, encode_value, register_count
from apps.protocols.models import Device, Point
from apps.sensors.quality import Quality

pytestmark = pytest.mark.asyncio

EXCEPTION_RESPONSE_READ_HOLDING = 0x83
ILLEGAL_DATA_ADDRESS = 2


def make_device(port):
    return Device(id=1, name="Test controller", host="127.0.0.1", port=port, unit_id=1, timeout=1.0)


def make_point(point_id, address, data_type="uint16", **fields):
    fields.setdefault("register_type", "holding")
    return Point(id=point_id, sensor_id=1000 + point_id, address=address, data_type=data_type, **fields)


async def read(register_server, points):
    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        samples = await driver.read(points)
    return samples, driver.point_errors


async def test_exception_response_marks_only_that_point(register_server):
    register_server.set("holding", 0, [0x0000, 0x3FC0])
    register_server.set("holding", 198, [42])
    good = make_point(1, 0, "float32", byte_order="CDAB")
    missing = make_point(2, 5000)
    near_good = make_point(3, 198)
    near_missing = make_point(4, 200)
    driver = ModbusTcpDriver(make_device(register_server.port))

    async with driver:
        samples = await driver.read([good, missing, near_good, near_missing])
        errors = driver.point_errors
        connected_after = driver.client.connected
        again = await driver.read([good])

    by_sensor = {sample.sensor_id: sample for sample in samples}
    assert by_sensor[good.sensor_id].value == 1.5
    assert by_sensor[good.sensor_id].quality == Quality.GOOD
    assert by_sensor[near_good.sensor_id].value == 42
    assert by_sensor[near_good.sensor_id].quality == Quality.GOOD
    for bad in (missing, near_missing):
        assert by_sensor[bad.sensor_id].value is None
        assert by_sensor[bad.sensor_id].quality == Quality.BAD_DEVICE_EXCEPTION
        assert "exception 2 (illegal data address)" in errors[bad.pk]
    assert good.pk not in errors
    assert (EXCEPTION_RESPONSE_READ_HOLDING, ILLEGAL_DATA_ADDRESS) in register_server.responses
    assert connected_after
    assert again[0].value == 1.5


async def test_failed_block_falls_back_to_point_reads(register_server):
    points = [make_point(1, 198), make_point(2, 200)]

    await read(register_server, points)

    assert register_server.read_requests() == [(3, 198, 3), (3, 198, 1), (3, 200, 1)]


async def test_bits_of_0x6481_read_with_one_request(register_server):
    register_server.set("holding", 10, [0x6481])
    expected = {0: 1.0, 7: 1.0, 8: 0.0, 10: 1.0, 14: 1.0}
    points = [make_point(bit, 10, "bit", bit=bit) for bit in expected]

    samples, _ = await read(register_server, points)

    assert register_server.read_requests() == [(3, 10, 1)]
    for point, sample in zip(points, samples, strict=True):
        assert sample.value == expected[point.bit], f"bit {point.bit}"
        assert sample.quality == Quality.GOOD


async def test_uint64_gain_100_and_invalid_markers(register_server):
    register_server.set("holding", 20, [0, 0, 1, 0x86A0])
    register_server.set("holding", 24, [0xFFFF] * 4)
    register_server.set("holding", 28, [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF])
    energy, all_ones, max_signed = (make_point(i, 20 + 4 * i, "uint64", scale=0.01) for i in range(3))

    samples, errors = await read(register_server, [energy, all_ones, max_signed])

    assert samples[0].value == pytest.approx(1000.00, abs=1e-9)
    assert samples[0].quality == Quality.GOOD
    for point, sample in zip((all_ones, max_signed), samples[1:], strict=True):
        assert sample.value is None
        assert sample.quality == Quality.BAD_NOT_IMPLEMENTED
        assert "not implemented" in errors[point.pk]
    assert register_server.read_requests() == [(3, 20, 12)]


async def test_scale_factor_applied_from_same_poll(register_server):
    register_server.set("holding", 40, [2345, 0xFFFE, 0x8000, 7])
    power = make_point(1, 40, "int16", scale_factor_address=41)
    unscaled = make_point(2, 43, "int16", scale_factor_address=42)

    samples, errors = await read(register_server, [power, unscaled])

    assert samples[0].value == pytest.approx(23.45)
    assert samples[0].quality == Quality.GOOD
    assert samples[1].value is None
    assert samples[1].quality == Quality.BAD_NOT_IMPLEMENTED
    assert "scale-factor register 42" in errors[unscaled.pk]
    assert register_server.read_requests() == [(3, 40, 4)]


async def test_scale_factor_outside_sunspec_range_is_bad(register_server):
    register_server.set("holding", 50, [5, 11])
    point = make_point(1, 50, "int16", scale_factor_address=51)

    samples, errors = await read(register_server, [point])

    assert samples[0].quality == Quality.BAD_CONFIGURATION
    assert "-10 to 10" in errors[point.pk]


async def test_float32_cdab_block(register_server):
    register_server.set("holding", 60, [0, 0x3F80, 0, 0x4000, 0, 0x4040])
    points = [make_point(i, 60 + 2 * i, "float32", byte_order="CDAB") for i in range(3)]

    samples, _ = await read(register_server, points)

    assert [sample.value for sample in samples] == [1.0, 2.0, 3.0]
    assert register_server.read_requests() == [(3, 60, 6)]


async def test_float32_badc_minus_1_11(register_server):
    register_server.set("input", 4, [0x8EBF, 0x7B14])
    point = make_point(1, 4, "float32", byte_order="BADC", register_type="input")

    samples, _ = await read(register_server, [point])

    assert samples[0].value == pytest.approx(-1.11, abs=1e-6)


async def test_coils_and_discrete_inputs(register_server):
    register_server.set("coil", 3, [True])
    register_server.set("discrete", 5, [True])
    points = [
        make_point(1, 2, "bool", register_type="coil"),
        make_point(2, 3, "bool", register_type="coil"),
        make_point(3, 5, "bool", register_type="discrete"),
    ]

    samples, _ = await read(register_server, points)

    assert [sample.value for sample in samples] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("byte_order", "registers"),
    [("CDAB", [0x0000, 0x4148]), ("ABCD", [0x4148, 0x0000]), ("BADC", [0x4841, 0x0000]), ("DCBA", [0x0000, 0x4841])],
)
async def test_write_float32_12_5(register_server, byte_order, registers):
    point = make_point(1, 70, "float32", byte_order=byte_order)

    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        written = await driver.write(point, 12.5)

    assert written == 12.5
    assert register_server.get("holding", 70, 2) == registers


async def test_write_bit_keeps_other_bits(register_server):
    register_server.set("holding", 80, [0x6481])

    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        await driver.write(make_point(1, 80, "bit", bit=8), 1)
        after_set = register_server.get("holding", 80)[0]
        await driver.write(make_point(2, 80, "bit", bit=14), 0)
        after_clear = register_server.get("holding", 80)[0]

    assert after_set == 0x6581
    assert after_clear == 0x2581


async def test_write_bit_badc_sets_swapped_bit(register_server):
    register_server.set("holding", 81, [0x0000])

    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        await driver.write(make_point(1, 81, "bit", bit=0, byte_order="BADC"), 1)

    assert register_server.get("holding", 81) == [0x0100]


async def test_write_scaled_integer_with_scale_factor(register_server):
    register_server.set("holding", 90, [0, 0xFFFF])
    point = make_point(1, 90, "int16", scale_factor_address=91)

    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        written = await driver.write(point, 12.34)

    assert register_server.get("holding", 90) == [123]
    assert written == pytest.approx(12.3)


async def test_write_coil(register_server):
    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        await driver.write(make_point(1, 7, "bool", register_type="coil"), 1)

    assert register_server.get("coil", 7) == [True]


async def test_write_rejected_names_exception(register_server):
    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        with pytest.raises(WriteRejected, match=r"exception 2 \(illegal data address\)"):
            await driver.write(make_point(1, 5000), 1)


# Values whose bytes differ, so a wrong byte or word order changes the result. The 64-bit ones
# fit a double exactly, because setpoints pass through engineering units as floats.
TYPE_VALUES = {
    "int16": -12_345,
    "uint16": 0xA1B2,
    "int32": -123_456_789,
    "uint32": 0xA1B2C3D4,
    "int64": -0x0102030405060000,
    "uint64": 0xA1B2C3D4E5F60000,
    "float32": -1234.5,
    "float64": 6.02214076e23,
}


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
@pytest.mark.parametrize("data_type", sorted(TYPE_VALUES))
async def test_write_and_read_every_type_and_order(register_server, data_type, byte_order):
    value = TYPE_VALUES[data_type]
    point = make_point(1, 100, data_type, byte_order=byte_order)

    async with ModbusTcpDriver(make_device(register_server.port)) as driver:
        written = await driver.write(point, value)
        [sample] = await driver.read([point])

    stored = register_server.get("holding", 100, register_count(data_type))
    assert stored == encode_value(value, data_type, byte_order)
    assert written == value
    assert sample.value == value
    assert sample.quality == Quality.GOOD


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
@pytest.mark.parametrize("data_type", sorted(TYPE_VALUES))
async def test_read_every_type_and_order_from_input_registers(register_server, data_type, byte_order):
    value = TYPE_VALUES[data_type]
    register_server.set("input", 40, encode_value(value, data_type, byte_order))
    point = make_point(1, 40, data_type, byte_order=byte_order, register_type="input")

    samples, errors = await read(register_server, [point])

    assert samples[0].value == value
    assert samples[0].quality == Quality.GOOD
    assert errors == {}


def marker_registers(data_type, marker, byte_order):
    """Return the registers of a SunSpec marker in ``byte_order``; NaN markers go through their bit pattern."""
    if data_type == "float32":
        return encode_value(struct.unpack(">I", struct.pack(">f", marker))[0], "uint32", byte_order)
    if data_type == "float64":
        return encode_value(struct.unpack(">Q", struct.pack(">d", marker))[0], "uint64", byte_order)
    return encode_value(marker, data_type, byte_order)


SUNSPEC_MARKERS = [
    ("int16", -0x8000),
    ("uint16", 0xFFFF),
    ("int32", -0x80000000),
    ("uint32", 0xFFFFFFFF),
    ("int64", -0x8000000000000000),
    ("uint64", 0xFFFFFFFFFFFFFFFF),
    ("uint64", 0x7FFFFFFFFFFFFFFF),
    ("float32", float("nan")),
    ("float64", float("nan")),
]


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
@pytest.mark.parametrize(("data_type", "marker"), SUNSPEC_MARKERS, ids=lambda item: f"{item}")
async def test_sunspec_marker_is_bad_in_every_order(register_server, data_type, marker, byte_order):
    register_server.set("holding", 120, marker_registers(data_type, marker, byte_order))
    register_server.set("holding", 130, [7])
    point = make_point(1, 120, data_type, byte_order=byte_order)
    neighbour = make_point(2, 130)

    samples, errors = await read(register_server, [point, neighbour])

    assert samples[0].value is None
    assert samples[0].quality == Quality.BAD_NOT_IMPLEMENTED
    assert "not implemented" in errors[point.pk]
    assert samples[1].value == 7
    assert samples[1].quality == Quality.GOOD
