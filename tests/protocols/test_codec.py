"""Tests of the Modbus register codec. They need neither Django nor a database."""

import math

import pytest

from apps.protocols.modbus.codec import (
    BYTE_ORDERS,
    INTEGER_RANGES,
    decode_registers,
    encode_value,
    is_not_implemented,
    register_count,
)

# Values whose bytes all differ, so that a wrong byte or word order changes the result.
ROUND_TRIP_VALUES = {
    "int16": -12_345,
    "uint16": 0xA1B2,
    "int32": -123_456_789,
    "uint32": 0xA1B2C3D4,
    "int64": -0x0102030405060708,
    "uint64": 0xA1B2C3D4E5F60718,
    "float32": -1234.5,
    "float64": 6.02214076e23,
}


@pytest.mark.parametrize(
    ("data_type", "string_length", "expected"),
    [
        ("int16", None, 1),
        ("uint16", None, 1),
        ("int32", None, 2),
        ("uint32", None, 2),
        ("int64", None, 4),
        ("uint64", None, 4),
        ("float32", None, 2),
        ("float64", None, 4),
        ("bit", None, 1),
        ("bool", None, 1),
        ("string", 1, 1),
        ("string", 16, 8),
        ("string", 17, 9),
    ],
)
def test_register_count(data_type, string_length, expected):
    assert register_count(data_type, string_length) == expected


def test_register_count_string_needs_length():
    with pytest.raises(ValueError, match="string_length"):
        register_count("string")


def test_register_count_unknown_type():
    with pytest.raises(ValueError, match="Unknown data type 'real'"):
        register_count("real")


def test_two_float32_cdab_holding_registers():
    registers = [0x0000, 0x3FC0, 0x0000, 0x4040]

    assert decode_registers(registers[0:2], "float32", "CDAB") == 1.5
    assert decode_registers(registers[2:4], "float32", "CDAB") == 3.0


def test_three_float32_cdab_values():
    registers = [0, 0x3F80, 0, 0x4000, 0, 0x4040]

    values = [decode_registers(registers[i : i + 2], "float32", "CDAB") for i in range(0, 6, 2)]

    assert values == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("byte_order", "expected"),
    [
        ("CDAB", [0x0000, 0x4148]),
        ("ABCD", [0x4148, 0x0000]),
        ("BADC", [0x4841, 0x0000]),
        ("DCBA", [0x0000, 0x4841]),
    ],
)
def test_encode_float32_12_5(byte_order, expected):
    assert encode_value(12.5, "float32", byte_order) == expected


def test_float32_badc_decodes_minus_1_11():
    assert decode_registers([0x8EBF, 0x7B14], "float32", "BADC") == pytest.approx(-1.11, abs=1e-6)


@pytest.mark.parametrize(
    ("registers", "data_type", "byte_order", "expected"),
    [
        ([0x4ACE, 0x0000], "uint32", "CDAB", 19150),
        ([0x0000, 0x8000], "uint32", "CDAB", 2_147_483_648),
        ([0x0000, 0x8000], "uint32", "ABCD", 32768),
        ([0xFFFF, 0xFF98], "int32", "ABCD", -104),
        ([0xFF98, 0xFFFF], "int32", "CDAB", -104),
        ([0x98FF, 0xFFFF], "int32", "DCBA", -104),
        ([0xFFFF, 0x98FF], "int32", "BADC", -104),
        ([0, 0, 1, 0x86A0], "uint64", "ABCD", 100_000),
        ([0x86A0, 1, 0, 0], "uint64", "CDAB", 100_000),
        ([0, 0, 0x0100, 0xA086], "uint64", "BADC", 100_000),
        ([0xA086, 0x0100, 0, 0], "uint64", "DCBA", 100_000),
        ([0xFF98], "int16", "ABCD", -104),
        ([0x98FF], "int16", "BADC", -104),
        ([0xFF98], "uint16", "ABCD", 65_432),
    ],
)
def test_decode_integer(registers, data_type, byte_order, expected):
    assert decode_registers(registers, data_type, byte_order) == expected


def test_uint64_energy_with_gain_100():
    raw = decode_registers([0, 0, 1, 0x86A0], "uint64", "ABCD")

    assert raw / 100 == 1000.00


@pytest.mark.parametrize(
    ("bit", "expected"),
    [(0, True), (1, False), (7, True), (8, False), (10, True), (13, True), (14, True), (15, False)],
)
def test_bit_of_register_0x6481(bit, expected):
    assert decode_registers([0x6481], "bit", bit=bit) is expected


def test_bit_badc_swaps_bytes_first():
    assert decode_registers([0x8164], "bit", "BADC", bit=7) is True


@pytest.mark.parametrize("bit", [None, -1, 16])
def test_bit_index_invalid(bit):
    with pytest.raises(ValueError, match="bit index"):
        decode_registers([0x6481], "bit", bit=bit)


@pytest.mark.parametrize(("values", "expected"), [([True], True), ([False], False), ([1], True), ([0], False)])
def test_decode_bool(values, expected):
    assert decode_registers(values, "bool") is expected


@pytest.mark.parametrize("values", [[], [True, False], [2]])
def test_decode_bool_invalid(values):
    with pytest.raises(ValueError, match="'bool'"):
        decode_registers(values, "bool")


@pytest.mark.parametrize(("value", "expected"), [(True, [1]), (False, [0]), (1, [1]), (0, [0])])
def test_encode_bool(value, expected):
    assert encode_value(value, "bool") == expected


@pytest.mark.parametrize("data_type", sorted(ROUND_TRIP_VALUES))
@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_round_trip(data_type, byte_order):
    value = ROUND_TRIP_VALUES[data_type]

    registers = encode_value(value, data_type, byte_order)

    assert len(registers) == register_count(data_type)
    assert decode_registers(registers, data_type, byte_order) == value


@pytest.mark.parametrize("data_type", ["int32", "uint32", "int64", "uint64", "float32", "float64"])
def test_byte_orders_give_distinct_registers(data_type):
    encodings = {tuple(encode_value(ROUND_TRIP_VALUES[data_type], data_type, order)) for order in BYTE_ORDERS}

    assert len(encodings) == len(BYTE_ORDERS)


@pytest.mark.parametrize("data_type", sorted(INTEGER_RANGES))
@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
def test_round_trip_integer_limits(data_type, byte_order):
    minimum, maximum = INTEGER_RANGES[data_type]

    assert decode_registers(encode_value(minimum, data_type, byte_order), data_type, byte_order) == minimum
    assert decode_registers(encode_value(maximum, data_type, byte_order), data_type, byte_order) == maximum


@pytest.mark.parametrize(
    ("value", "data_type"),
    [
        (32_768, "int16"),
        (-32_769, "int16"),
        (-1, "uint16"),
        (65_536, "uint16"),
        (2**31, "int32"),
        (-1, "uint32"),
        (2**32, "uint32"),
        (2**63, "int64"),
        (-1, "uint64"),
        (2**64, "uint64"),
    ],
)
def test_encode_integer_out_of_range(value, data_type):
    minimum, maximum = INTEGER_RANGES[data_type]

    with pytest.raises(ValueError) as excinfo:
        encode_value(value, data_type)

    message = str(excinfo.value)
    assert str(value) in message
    assert data_type in message
    assert f"{minimum} to {maximum}" in message


def test_encode_integer_accepts_whole_float():
    assert encode_value(1234.0, "int16") == [1234]


@pytest.mark.parametrize("value", [12.5, "12", None, True])
def test_encode_integer_rejects_non_integer(value):
    with pytest.raises(ValueError, match="int16"):
        encode_value(value, "int16")


def test_encode_float32_overflow():
    with pytest.raises(ValueError, match="float32"):
        encode_value(1e39, "float32")


def test_encode_bit_rejected():
    with pytest.raises(ValueError, match="uint16"):
        encode_value(1, "bit")


@pytest.mark.parametrize("byte_order", ["ABCD", "BADC"])
def test_string_round_trip(byte_order):
    registers = encode_value("HP-01", "string", byte_order, string_length=8)

    assert len(registers) == 4
    assert decode_registers(registers, "string", byte_order, string_length=8) == "HP-01"


def test_string_abcd_register_layout():
    assert encode_value("AB", "string") == [0x4142]


def test_string_badc_register_layout():
    assert encode_value("AB", "string", "BADC") == [0x4241]


def test_string_without_length_decodes_all():
    assert decode_registers([0x4142, 0x4300], "string") == "ABC"


def test_string_longer_than_length_rejected():
    with pytest.raises(ValueError, match="exceeds string_length 4"):
        encode_value("Boiler", "string", string_length=4)


@pytest.mark.parametrize("byte_order", ["CDAB", "DCBA"])
def test_string_word_swapped_order_rejected(byte_order):
    with pytest.raises(ValueError, match="not supported for data type 'string'"):
        decode_registers([0x4142], "string", byte_order)


def test_string_invalid_utf8_rejected():
    with pytest.raises(ValueError, match="not a valid utf-8 string"):
        decode_registers([0xFFFE], "string")


@pytest.mark.parametrize(
    ("registers", "data_type", "expected_count"),
    [
        ([0x3FC0], "float32", 2),
        ([0, 0, 0], "float32", 2),
        ([0, 0, 0], "uint64", 4),
        ([], "int16", 1),
    ],
)
def test_decode_wrong_register_count(registers, data_type, expected_count):
    with pytest.raises(ValueError) as excinfo:
        decode_registers(registers, data_type)

    message = str(excinfo.value)
    assert data_type in message
    assert f"expected {expected_count}, got {len(registers)}" in message
    assert f"Read {expected_count} register(s)" in message


def test_decode_wrong_count_names_registers():
    with pytest.raises(ValueError, match=r"\[0x3FC0\]"):
        decode_registers([0x3FC0], "float32")


@pytest.mark.parametrize("registers", [[0x10000], [-1], [1.5], [True]])
def test_decode_rejects_non_register_values(registers):
    with pytest.raises(ValueError, match="not a 16-bit register value"):
        decode_registers(registers, "uint16")


def test_unknown_byte_order():
    with pytest.raises(ValueError, match="Unknown byte order 'BE'"):
        decode_registers([0, 0], "float32", "BE")


@pytest.mark.parametrize(
    ("registers", "data_type", "byte_order"),
    [
        ([0x8000], "int16", "ABCD"),
        ([0x0080], "int16", "BADC"),
        ([0xFFFF], "uint16", "ABCD"),
        ([0x8000, 0x0000], "int32", "ABCD"),
        ([0x0000, 0x8000], "int32", "CDAB"),
        ([0xFFFF, 0xFFFF], "uint32", "ABCD"),
        ([0x8000, 0, 0, 0], "int64", "ABCD"),
        ([0, 0, 0, 0x8000], "int64", "CDAB"),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], "uint64", "ABCD"),
        ([0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF], "uint64", "ABCD"),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0x7FFF], "uint64", "CDAB"),
        ([0x7FC0, 0x0000], "float32", "ABCD"),
        ([0x0000, 0x7FC0], "float32", "CDAB"),
        ([0xFFFF, 0xFFFF], "float32", "ABCD"),
        ([0x7FF8, 0, 0, 0], "float64", "ABCD"),
        ([0xFFFF], "bit", "ABCD"),
    ],
)
def test_not_implemented_markers(registers, data_type, byte_order):
    assert is_not_implemented(registers, data_type, byte_order) is True


@pytest.mark.parametrize(
    ("registers", "data_type", "byte_order"),
    [
        ([0x8000], "int16", "BADC"),
        ([0x7FFF], "int16", "ABCD"),
        ([0x8000], "uint16", "ABCD"),
        ([0x0000, 0x8000], "int32", "ABCD"),
        ([0xFFFF, 0xFFFE], "uint32", "ABCD"),
        ([0, 0, 0, 0x8000], "int64", "ABCD"),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0x7FFF], "uint64", "ABCD"),
        ([0x7F80, 0x0000], "float32", "ABCD"),
        ([0x0000, 0x0000], "float32", "ABCD"),
        ([0x6481], "bit", "ABCD"),
    ],
)
def test_not_implemented_ordinary_values(registers, data_type, byte_order):
    assert is_not_implemented(registers, data_type, byte_order) is False


@pytest.mark.parametrize("data_type", ["string", "bool"])
def test_not_implemented_has_no_marker(data_type):
    assert is_not_implemented([0xFFFF], data_type) is False


def test_not_implemented_wrong_register_count():
    with pytest.raises(ValueError, match="expected 2, got 1"):
        is_not_implemented([0xFFFF], "uint32")


def test_encode_nan_is_not_implemented():
    registers = encode_value(math.nan, "float32", "CDAB")

    assert is_not_implemented(registers, "float32", "CDAB") is True
