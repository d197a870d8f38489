"""Decoding and encoding of Modbus register values.

Registers are 16-bit unsigned integers as returned by pymodbus (``response.registers``).
Coils and discrete inputs arrive as booleans (``response.bits``). Data types and byte
orders are plain strings, so they can be stored in the database and in device templates.

Byte orders name the position of bytes A (most significant) to D in a 32-bit value:

- ``"ABCD"``: big-endian, high word first (the Modbus default).
- ``"CDAB"``: word-swapped, low word first.
- ``"BADC"``: bytes swapped within each word, high word first.
- ``"DCBA"``: fully little-endian.

For 64-bit types the same names keep their meaning: ``CDAB`` reverses the order of the
four words, ``BADC`` swaps the bytes in each word and ``DCBA`` does both.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal

from pymodbus.client import ModbusTcpClient

__all__ = [
    "BYTE_ORDERS",
    "DATA_TYPES",
    "INTEGER_RANGES",
    "NOT_IMPLEMENTED_INTEGERS",
    "decode_registers",
    "encode_value",
    "is_not_implemented",
    "register_count",
]

_DATATYPE = ModbusTcpClient.DATATYPE

# Numeric types and the pymodbus conversion used for each.
_NUMERIC_TYPES: dict[str, ModbusTcpClient.DATATYPE] = {
    "int16": _DATATYPE.INT16,
    "uint16": _DATATYPE.UINT16,
    "int32": _DATATYPE.INT32,
    "uint32": _DATATYPE.UINT32,
    "int64": _DATATYPE.INT64,
    "uint64": _DATATYPE.UINT64,
    "float32": _DATATYPE.FLOAT32,
    "float64": _DATATYPE.FLOAT64,
}

DATA_TYPES: tuple[str, ...] = (*_NUMERIC_TYPES, "string", "bit", "bool")
BYTE_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")

# Inclusive value range of each integer type.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}

# SunSpec "not implemented" values, plus all-ones words that some gateways return on a
# communication error. Compared with the value after the byte order has been applied.
NOT_IMPLEMENTED_INTEGERS: dict[str, frozenset[int]] = {
    "int16": frozenset({-(2**15)}),
    "uint16": frozenset({0xFFFF}),
    "int32": frozenset({-(2**31)}),
    "uint32": frozenset({0xFFFFFFFF}),
    "int64": frozenset({-(2**63)}),
    "uint64": frozenset({0xFFFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF}),
    # A "bit" point reads one bit of a SunSpec bitfield16, which is 0xFFFF when not implemented.
    "bit": frozenset({0xFFFF}),
}

_STRING_ENCODING = "utf-8"


def register_count(data_type: str, string_length: int | None = None) -> int:
    """Return the number of registers (or coils) that one value of ``data_type`` occupies.

    ``string_length`` is the string length in bytes and is required for ``"string"``.
    """
    _check_data_type(data_type)
    if data_type == "string":
        if string_length is None or string_length < 1:
            raise ValueError(
                f"Invalid string_length {string_length!r} for data type 'string'. "
                "Pass the string length in bytes (1 or more)."
            )
        return (string_length + 1) // 2
    if data_type in ("bit", "bool"):
        return 1
    return _NUMERIC_TYPES[data_type].value[1]


def decode_registers(
    registers: Sequence[int] | Sequence[bool],
    data_type: str,
    byte_order: str = "ABCD",
    *,
    bit: int | None = None,
    string_length: int | None = None,
) -> int | float | str | bool:
    """Decode one value of ``data_type`` from ``registers``.

    ``bit`` (0 = least significant, up to 15) selects the bit for ``"bit"``.
    ``string_length`` is optional for ``"string"``. Without it all registers are decoded.
    Trailing NUL bytes of a string are removed.
    Raises ValueError when the register count, a register value or a parameter is invalid.
    """
    _check_data_type(data_type)
    _check_byte_order(byte_order)

    if data_type == "bool":
        return _decode_bool(registers)

    if data_type == "string" and string_length is None:
        expected = len(registers)
        if expected == 0:
            raise ValueError("Cannot decode a string from an empty register list. Read at least one register.")
    else:
        expected = register_count(data_type, string_length)
    words = _check_registers(registers, data_type, expected)

    if data_type == "string":
        return _decode_string(words, byte_order)

    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise ValueError(
                f"Invalid bit index {bit!r} for data type 'bit'. Pass bit=0 to 15 "
                "(0 is the least significant bit)."
            )
        return bool((_decode_number(words, "uint16", byte_order) >> bit) & 1)

    return _decode_number(words, data_type, byte_order)


def encode_value(
    value: int | float | str | bool,
    data_type: str,
    byte_order: str = "ABCD",
    *,
    string_length: int | None = None,
) -> list[int]:
    """Encode ``value`` as the registers to write for ``data_type``.

    Integer types accept an int, or a float without a fractional part, so callers must
    round scaled values first. ``"bool"`` returns ``[1]`` or ``[0]``. A string is padded
    with NUL bytes to ``string_length`` bytes when given.
    Raises ValueError for a value outside the type's range or of the wrong kind.
    ``"bit"`` cannot be encoded, because writing one bit needs the other 15 bits of the register.
    """
    _check_data_type(data_type)
    _check_byte_order(byte_order)

    if data_type == "bit":
        raise ValueError(
            "Cannot encode data type 'bit'. Read the register, change the bit and "
            "write the whole register as 'uint16'."
        )
    if data_type == "bool":
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError(f"Invalid value {value!r} for data type 'bool'. Pass True, False, 1 or 0.")
        return [int(bool(value))]
    if data_type == "string":
        return _encode_string(value, byte_order, string_length)

    if data_type in INTEGER_RANGES:
        number: int | float = _to_integer(value, data_type)
    else:
        number = _to_float(value, data_type)

    try:
        words = ModbusTcpClient.convert_to_registers(
            number, _NUMERIC_TYPES[data_type], word_order=_word_order(byte_order)
        )
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"Cannot encode {value!r} as {data_type}: {exc}.") from exc
    return _swap_bytes(words) if _swaps_bytes(byte_order) else words


def is_not_implemented(registers: Sequence[int], data_type: str, byte_order: str = "ABCD") -> bool:
    """Return True when ``registers`` contain a "not implemented" or comm-error marker.

    The markers are the SunSpec values int16 0x8000, uint16 0xFFFF, int32 0x80000000,
    uint32 0xFFFFFFFF, int64 0x8000000000000000, uint64 0xFFFFFFFFFFFFFFFF and
    0x7FFFFFFFFFFFFFFF, and NaN for float32 and float64. A "bit" point uses the uint16
    marker of the whole register. Strings and booleans have no marker, so the result is False.
    """
    _check_data_type(data_type)
    _check_byte_order(byte_order)
    if data_type in ("string", "bool"):
        return False

    words = _check_registers(registers, data_type, register_count(data_type))
    if data_type in ("float32", "float64"):
        return math.isnan(_decode_number(words, data_type, byte_order))

    number_type = "uint16" if data_type == "bit" else data_type
    return _decode_number(words, number_type, byte_order) in NOT_IMPLEMENTED_INTEGERS[data_type]


def _check_data_type(data_type: str) -> None:
    if data_type not in DATA_TYPES:
        raise ValueError(f"Unknown data type {data_type!r}. Use one of {', '.join(DATA_TYPES)}.")


def _check_byte_order(byte_order: str) -> None:
    if byte_order not in BYTE_ORDERS:
        raise ValueError(f"Unknown byte order {byte_order!r}. Use one of {', '.join(BYTE_ORDERS)}.")


def _check_registers(registers: Sequence[int] | Sequence[bool], data_type: str, expected: int) -> list[int]:
    """Return the registers as a list after checking their count and 16-bit range."""
    words = list(registers)
    if len(words) != expected:
        raise ValueError(
            f"Registers {_format_registers(words)} have the wrong count for {data_type}: "
            f"expected {expected}, got {len(words)}. Read {expected} register(s) starting at the point's address."
        )
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ValueError(
                f"Registers {_format_registers(words)} contain {word!r}, which is not a 16-bit "
                f"register value (0 to 65535), so they cannot be decoded as {data_type}."
            )
    return words


def _format_registers(registers: Sequence[object]) -> str:
    """Format registers as hex words, keeping any non-integer item as its repr."""
    items = []
    for word in registers:
        if isinstance(word, int) and not isinstance(word, bool) and word >= 0:
            items.append(f"0x{word:04X}")
        else:
            items.append(repr(word))
    return "[" + ", ".join(items) + "]"


def _word_order(byte_order: str) -> Literal["big", "little"]:
    return "little" if byte_order in ("CDAB", "DCBA") else "big"


def _swaps_bytes(byte_order: str) -> bool:
    return byte_order in ("BADC", "DCBA")


def _swap_bytes(words: Sequence[int]) -> list[int]:
    return [((word & 0xFF) << 8) | (word >> 8) for word in words]


def _decode_number(words: list[int], data_type: str, byte_order: str) -> int | float:
    if _swaps_bytes(byte_order):
        words = _swap_bytes(words)
    value = ModbusTcpClient.convert_from_registers(
        words, _NUMERIC_TYPES[data_type], word_order=_word_order(byte_order)
    )
    assert isinstance(value, (int, float))  # one value, because the count was checked
    return value


def _decode_bool(values: Sequence[int] | Sequence[bool]) -> bool:
    items = list(values)
    if len(items) != 1 or items[0] not in (0, 1):
        raise ValueError(
            f"Values {items!r} are not one coil or discrete input state for data type 'bool'. "
            "Pass exactly one of True, False, 1 or 0."
        )
    return bool(items[0])


def _check_string_byte_order(byte_order: str) -> None:
    # Word-reversed orders have no agreed meaning for a string of any length.
    if byte_order not in ("ABCD", "BADC"):
        raise ValueError(
            f"Byte order {byte_order!r} is not supported for data type 'string'. "
            "Use 'ABCD' (characters in register order) or 'BADC' (bytes swapped in each register)."
        )


def _decode_string(words: list[int], byte_order: str) -> str:
    _check_string_byte_order(byte_order)
    if _swaps_bytes(byte_order):
        words = _swap_bytes(words)
    try:
        text = ModbusTcpClient.convert_from_registers(
            words, _DATATYPE.STRING, string_encoding=_STRING_ENCODING
        )
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"Registers {_format_registers(words)} are not a valid {_STRING_ENCODING} string: {exc}. "
            "Check the start address, the length and the byte order of the point."
        ) from exc
    assert isinstance(text, str)
    return text


def _encode_string(value: object, byte_order: str, string_length: int | None) -> list[int]:
    _check_string_byte_order(byte_order)
    if not isinstance(value, str):
        raise ValueError(f"Invalid value {value!r} for data type 'string'. Pass a str.")
    encoded = value.encode(_STRING_ENCODING)
    if string_length is not None:
        register_count("string", string_length)
        if len(encoded) > string_length:
            raise ValueError(
                f"String {value!r} is {len(encoded)} bytes long, which exceeds string_length "
                f"{string_length}. Shorten it or raise string_length."
            )
        # NUL padding is what the decoder strips again.
        value = (encoded + b"\x00" * (string_length - len(encoded))).decode(_STRING_ENCODING)
    words = ModbusTcpClient.convert_to_registers(value, _DATATYPE.STRING, string_encoding=_STRING_ENCODING)
    return _swap_bytes(words) if _swaps_bytes(byte_order) else words


def _to_integer(value: object, data_type: str) -> int:
    minimum, maximum = INTEGER_RANGES[data_type]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"Invalid value {value!r} for {data_type}. Pass an integer from {minimum} to {maximum} "
            "(round scaled values first)."
        )
    if not minimum <= value <= maximum:
        raise ValueError(f"Value {value} is out of range for {data_type}, whose range is {minimum} to {maximum}.")
    return value


def _to_float(value: object, data_type: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid value {value!r} for {data_type}. Pass an int or a float.")
    return float(value)
