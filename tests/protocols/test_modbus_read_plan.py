"""The read plan's precompiled decoders give what the general decoder gives, marker checks included."""

import random
from datetime import UTC, datetime

import pytest

from apps.protocols.drivers.modbus_tcp import ModbusTcpDriver, ReadPlan, ReadResult
from apps.protocols.modbus.codec import BYTE_ORDERS, register_count
from apps.protocols.models import Device, Point
from apps.sensors.quality import Quality
from apps.sensors.samples import Sample, SampleRun, expand_samples

NUMERIC_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def make_driver():
    return ModbusTcpDriver(Device(id=1, name="Plan test", host="127.0.0.1", port=502, unit_id=1, timeout=1.0))


def general_sample(point, registers):
    """The sample the driver's general path (used for coils and scale factors) makes of ``registers``."""
    driver = make_driver()
    offset = point.address
    return driver._sample(point, ReadResult(NOW, values=registers[offset:offset + point.register_count]), None)


def planned_samples(points, registers):
    driver = make_driver()
    plan = ReadPlan(points)
    assert len(plan.blocks) == 1
    [block] = plan.blocks
    samples = [None] * len(points)
    leftover = driver._decode_block(block, (NOW, registers[block.start:block.start + block.count]), samples)
    assert leftover is None, "every point of these blocks has a fast decoder"
    return samples, driver.point_errors


def layout(data_types, byte_order, **fields):
    """Points of ``data_types`` placed one after another from register 0."""
    points, address = [], 0
    for number, data_type in enumerate(data_types, start=1):
        points.append(Point(
            id=number, sensor_id=100 + number, register_type="holding", address=address,
            data_type=data_type, byte_order=byte_order, **fields,
        ))
        address += register_count(data_type)
    return points, address


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_random_registers_decode_as_the_general_path_does(byte_order):
    rng = random.Random(f"plan-{byte_order}")
    points, count = layout(NUMERIC_TYPES * 3, byte_order, scale=0.1, offset=-5.0)
    for _ in range(200):
        registers = [rng.choice((0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0xFFC0, rng.randrange(0x10000)))
                     for _ in range(count)]
        samples, _ = planned_samples(points, registers)
        for point, sample in zip(points, samples, strict=True):
            expected = general_sample(point, registers)
            assert (sample.sensor_id, sample.time, sample.quality) == (
                expected.sensor_id, expected.time, expected.quality), (point.data_type, registers)
            if expected.value is None or expected.value == expected.value:
                assert sample.value == expected.value, (point.data_type, byte_order, registers)
            else:
                assert sample.value != sample.value


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_bits_decode_as_the_general_path_does(byte_order):
    points = [
        Point(id=bit + 1, sensor_id=200 + bit, register_type="holding", address=0, data_type="bit",
              byte_order=byte_order, bit=bit)
        for bit in range(16)
    ]
    for word in (0x6481, 0xFFFF, 0x0000, 0x8001):
        samples, _ = planned_samples(points, [word])
        assert [sample.value for sample in samples] == [general_sample(point, [word]).value for point in points]


def test_cases_from_public_reports():
    points, _ = layout(["float32", "float32"], "CDAB")
    samples, _ = planned_samples(points, [0x0000, 0x3FC0, 0x0000, 0x4040])
    assert [sample.value for sample in samples] == [1.5, 3.0]

    [badc], _ = layout(["float32"], "BADC")
    [sample], _ = planned_samples([badc], [0x8EBF, 0x7B14])
    assert round(sample.value, 2) == -1.11

    [low_word_first], _ = layout(["uint32"], "CDAB")
    [sample], _ = planned_samples([low_word_first], [0x4ACE, 0x0000])
    assert sample.value == 19150

    [gain], _ = layout(["uint64"], "ABCD", scale=0.01)
    [sample], _ = planned_samples([gain], [0, 0, 1, 0x86A0])
    assert sample.value == pytest.approx(1000.00)


def test_markers_read_bad_with_registers():
    points, _ = layout(["uint64", "uint64", "int16", "float32"], "ABCD")
    registers = [0xFFFF] * 4 + [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF] + [0x8000] + [0x7FC0, 0x0000]

    samples, errors = planned_samples(points, registers)

    assert [sample.quality for sample in samples] == [Quality.BAD_NOT_IMPLEMENTED] * 4
    assert [sample.value for sample in samples] == [None] * 4
    assert errors[1] == "holding 0: registers [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF] are the 'not implemented' marker of uint64"
    assert errors[3] == "holding 8: registers [0x8000] are the 'not implemented' marker of int16"


def test_scale_factor_points_use_general_path():
    scaled = Point(id=1, sensor_id=301, register_type="holding", address=0, data_type="int32", scale_factor_address=3)
    plain = Point(id=2, sensor_id=302, register_type="holding", address=4, data_type="uint16")

    plan = ReadPlan([scaled, plain])

    [block] = plan.blocks
    assert [decoder.point for unpacker in block.decoders for decoder in unpacker.decoders] == [plain]
    scale_factor = plan.scale_factors[("holding", 3)]
    samples = [None] * 2
    leftover = make_driver()._decode_block(block, (NOW, [0, 7, 0, 0xFFFE, 9]), samples)
    assert samples[0] is None
    assert samples[1].value == 9
    assert leftover[id(scaled)].values == [0, 7]
    assert leftover[id(scale_factor)].values == [0xFFFE]


def polled(points, registers):
    """Return what poll() makes of ``registers`` read as one reply: (Samples and SampleRuns, point errors)."""
    driver = make_driver()
    plan = ReadPlan(points)
    replies = [(NOW, registers[block.start:block.start + block.count]) for block in plan.blocks]
    runs = []
    samples = driver._decode_replies(plan, replies, runs)
    return runs + [sample for sample in samples if sample is not None], driver.point_errors


def by_sensor(samples):
    return sorted(samples, key=lambda sample: sample.sensor_id)


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (0.1, -5.0)])
def test_poll_gives_what_read_gives(byte_order, scale, offset):
    rng = random.Random(f"poll-{byte_order}-{scale}")
    points, count = layout(NUMERIC_TYPES * 3, byte_order, scale=scale, offset=offset)
    for _ in range(200):
        registers = [rng.choice((0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0xFFC0, rng.randrange(0x10000)))
                     for _ in range(count)]
        items, poll_errors = polled(points, registers)
        driver = make_driver()
        expected = by_sensor(driver._decode_replies(ReadPlan(points), [(NOW, registers)], None))

        got = by_sensor(expand_samples(items))
        assert [sample.sensor_id for sample in got] == [sample.sensor_id for sample in expected]
        for sample, reference in zip(got, expected, strict=True):
            assert (sample.time, sample.quality) == (reference.time, reference.quality), registers
            assert type(sample.value) is type(reference.value), registers
            if reference.value is None or reference.value == reference.value:
                assert sample.value == reference.value, (byte_order, registers)
        assert poll_errors == driver.point_errors


def test_poll_runs_only_valid_values():
    points, _ = layout(["uint16", "uint16", "float32", "float32"], "ABCD")

    clean, clean_errors = polled(points, [1, 2, 0x3FC0, 0, 0x4040, 0])
    marked, marked_errors = polled(points, [1, 0xFFFF, 0x7FC0, 0, 0x4040, 0])

    assert [type(item) for item in clean] == [SampleRun, SampleRun]
    assert [item.values for item in clean] == [[1.0, 2.0], [1.5, 3.0]]
    assert clean[0].sensor_id_bytes == (101).to_bytes(8, "little") + (102).to_bytes(8, "little")
    assert clean_errors == {}
    assert all(type(item) is Sample for item in marked)
    assert [(item.sensor_id, item.value, item.quality) for item in by_sensor(marked)] == [
        (101, 1.0, Quality.GOOD), (102, None, Quality.BAD_NOT_IMPLEMENTED),
        (103, None, Quality.BAD_NOT_IMPLEMENTED), (104, 3.0, Quality.GOOD),
    ]
    assert set(marked_errors) == {2, 3}


def test_poll_of_rejected_block_decodes_each_point():
    points, _ = layout(["uint16", "int32"], "ABCD")
    plan = ReadPlan(points)
    [block] = plan.blocks
    rejected = {id(points[0]): ReadResult(NOW, exception_code=2), id(points[1]): ReadResult(NOW, values=[0, 7])}
    driver = make_driver()
    runs = []

    samples = driver._decode_replies(plan, [rejected], runs)

    assert runs == []
    assert [(sample.value, sample.quality) for sample in samples] == [
        (None, Quality.BAD_DEVICE_EXCEPTION), (7.0, Quality.GOOD),
    ]
    assert driver.point_errors == {1: "holding 0: exception 2 (illegal data address)"}
    assert block.fast_positions == (0, 1)
