"""Turning DNP3 measurements into samples: point flags to quality, DNP3 times to UTC.

Flag bits follow IEEE 1815-2012 (section 11.9 and the object definitions). For binary
inputs and binary output status, bit 7 is the state itself, so it is the value and never
part of the quality.
"""

from dataclasses import dataclass
from datetime import datetime, timezone

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample

ONLINE = 0x01
RESTART = 0x02
COMM_LOST = 0x04
REMOTE_FORCED = 0x08
LOCAL_FORCED = 0x10
# Bit 5 and 6 mean different things per object group.
ANALOG_OVER_RANGE = 0x20
ANALOG_REFERENCE_ERROR = 0x40
BINARY_CHATTER_FILTER = 0x20
COUNTER_DISCONTINUITY = 0x40

ANALOG_TYPES = {"analog_input", "analog_output_status"}
BINARY_TYPES = {"binary_input", "binary_output_status"}
COUNTER_TYPES = {"counter", "frozen_counter"}

# opendnp3 measurement class names (yadnp3 bindings) and the point types they carry.
POINT_TYPES = {
    "IndexedAnalog": "analog_input",
    "IndexedBinary": "binary_input",
    "IndexedDoubleBitBinary": "double_bit_binary",
    "IndexedCounter": "counter",
    "IndexedFrozenCounter": "frozen_counter",
    "IndexedBinaryOutputStatus": "binary_output_status",
    "IndexedAnalogOutputStatus": "analog_output_status",
}

# Double-bit states: 1 determined off, 2 determined on; 0 intermediate and 3 indeterminate.
DOUBLE_BIT_VALUES = {1: 0.0, 2: 1.0}


@dataclass(frozen=True)
class Conversion:
    sample: Sample
    reason: str = ""


def quality_of(point_type, flags):
    """Return the quality that the DNP3 ``flags`` byte of a ``point_type`` measurement gives."""
    if flags & COMM_LOST:
        return Quality.BAD_COMM_LOST
    if not flags & ONLINE:
        return Quality.BAD
    if flags & RESTART:
        # The outstation has not updated the point since it restarted.
        return Quality.BAD
    if point_type in ANALOG_TYPES:
        if flags & ANALOG_OVER_RANGE:
            return Quality.BAD_OUT_OF_RANGE
        if flags & ANALOG_REFERENCE_ERROR:
            return Quality.UNCERTAIN_SENSOR_CAL
    if point_type in BINARY_TYPES and flags & BINARY_CHATTER_FILTER:
        return Quality.UNCERTAIN
    if point_type in COUNTER_TYPES and flags & COUNTER_DISCONTINUITY:
        return Quality.UNCERTAIN
    if flags & (REMOTE_FORCED | LOCAL_FORCED):
        return Quality.UNCERTAIN
    return Quality.GOOD


def measurement_time(milliseconds, time_valid, received_at):
    """Return the DNP3 time (milliseconds since 1970 UTC) as aware UTC, or ``received_at`` when it has none."""
    if not time_valid or milliseconds <= 0:
        return received_at
    return datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)


def to_sample(point, point_type, raw_value, flags, when):
    """Convert one measurement of ``point`` into a sample; bad quality drops the value."""
    quality = quality_of(point_type, flags)
    if quality >= Quality.BAD:
        return Conversion(Sample(point.sensor_id, when, None, quality), f"flags 0x{flags:02X}")
    if point_type == "double_bit_binary":
        state = int(raw_value)
        if state not in DOUBLE_BIT_VALUES:
            return Conversion(Sample(point.sensor_id, when, None, Quality.BAD),
                              f"double-bit state {state} is intermediate or indeterminate")
        number = DOUBLE_BIT_VALUES[state]
    else:
        number = float(raw_value)
    return Conversion(Sample(point.sensor_id, when, point.to_engineering(number), quality))
