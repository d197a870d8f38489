"""Setpoints as DNP3 commands: control relay output blocks and analog output blocks.

A binary output status point (group 10) is operated with a control relay output block
(CROB, group 12 var 1) and an analog output status point (group 40) with an analog output
block (group 41) of the point's data type.
"""

import struct
from dataclasses import dataclass

import opendnp3

from ..choices import DataType, Dnp3Control, Dnp3PointType

INT16_RANGE = range(-(2**15), 2**15)
INT32_RANGE = range(-(2**31), 2**31)

# The static variation a read-back requests: output status with flags, analogs as float32.
READ_BACK_VARIATIONS = {
    Dnp3PointType.BINARY_OUTPUT_STATUS: (10, 2),
    Dnp3PointType.ANALOG_OUTPUT_STATUS: (40, 3),
}


@dataclass(frozen=True)
class Dnp3Command:
    """A command object for one point, and what its output status should read afterwards."""

    command: object
    description: str
    # Engineering value the output status should read back, or None where it cannot be known (a pulse ends off).
    expected: float | None


def build_command(point, value):
    """Return the Dnp3Command that sets ``point`` to the engineering ``value``; raise ValueError when it cannot."""
    if point.dnp3_type == Dnp3PointType.BINARY_OUTPUT_STATUS:
        return _relay_output_block(point, value)
    if point.dnp3_type == Dnp3PointType.ANALOG_OUTPUT_STATUS:
        return _analog_output_block(point, value)
    raise ValueError(
        f"DNP3 {point.dnp3_type} {point.dnp3_index} is an input; setpoints go to binary_output_status "
        "or analog_output_status points."
    )


def _relay_output_block(point, value):
    if value not in (0.0, 1.0):
        raise ValueError(f"a binary output takes 0 or 1, not {value:g}")
    on = value == 1.0
    control = point.dnp3_control
    if control == Dnp3Control.LATCH:
        operation = opendnp3.OperationType.LATCH_ON if on else opendnp3.OperationType.LATCH_OFF
        block = opendnp3.ControlRelayOutputBlock(operation, opendnp3.TripCloseCode.NUL, False, 1, 0, 0)
        return Dnp3Command(block, f"CROB {operation.name}", value)
    if control == Dnp3Control.PULSE:
        if not on:
            raise ValueError("a pulse control takes 1 (pulse on); the output turns off by itself")
        block = opendnp3.ControlRelayOutputBlock(
            opendnp3.OperationType.PULSE_ON, opendnp3.TripCloseCode.NUL, False, 1,
            point.dnp3_on_time_ms, point.dnp3_off_time_ms,
        )
        description = f"CROB PULSE_ON on {point.dnp3_on_time_ms} ms, off {point.dnp3_off_time_ms} ms"
        return Dnp3Command(block, description, None)
    if control == Dnp3Control.TRIP_CLOSE:
        code = opendnp3.TripCloseCode.CLOSE if on else opendnp3.TripCloseCode.TRIP
        block = opendnp3.ControlRelayOutputBlock(
            opendnp3.OperationType.PULSE_ON, code, False, 1, point.dnp3_on_time_ms, 0
        )
        return Dnp3Command(block, f"CROB {code.name} PULSE_ON {point.dnp3_on_time_ms} ms", value)
    raise ValueError(f"unknown DNP3 control {control!r}; use latch, pulse or trip_close")


def _analog_output_block(point, value):
    raw = point.to_raw(value)
    if point.data_type == DataType.FLOAT32:
        try:
            encoded = struct.unpack("<f", struct.pack("<f", raw))[0]
        except OverflowError:
            raise ValueError(f"raw value {raw:g} does not fit a float32") from None
        block = opendnp3.AnalogOutputFloat32(encoded)
        return Dnp3Command(block, "analog output float32 (group 41 var 3)", point.to_engineering(encoded))

    if point.data_type == DataType.INT16:
        limits, variation, block_type = INT16_RANGE, 2, opendnp3.AnalogOutputInt16
    elif point.data_type == DataType.INT32:
        limits, variation, block_type = INT32_RANGE, 1, opendnp3.AnalogOutputInt32
    else:
        raise ValueError(f"data type {point.data_type!r} has no analog output block; use int32, int16 or float32")
    integer = round(raw)
    if integer not in limits:
        raise ValueError(f"raw value {integer} does not fit an {point.data_type}")
    description = f"analog output {point.data_type} (group 41 var {variation})"
    return Dnp3Command(block_type(integer), description, point.to_engineering(integer))


def status_text(status):
    """Return a command status as '<name> (<code>)', e.g. 'NOT_SUPPORTED (4)'."""
    return f"{status.name} ({int(status.value)})"
