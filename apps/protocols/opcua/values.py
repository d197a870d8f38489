"""Turning OPC UA DataValues into samples: status codes to quality, source timestamps to UTC.

The two top bits of a status code give its severity (OPC UA Part 4 section 7.39):
00 good, 01 uncertain, 10 bad. The fourth combination, 11, is reserved and treated as bad,
so an unknown code can never pass as a usable value.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from asyncua import ua
from asyncua.ua.status_codes import get_name_and_doc

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample

SEVERITY_GOOD = 0b00
SEVERITY_UNCERTAIN = 0b01

# Codes with a more exact quality than plain Bad or Uncertain, compared without the info bits.
_BAD_QUALITIES = {
    ua.StatusCodes.BadCommunicationError: Quality.BAD_COMM_LOST,
    ua.StatusCodes.BadNotConnected: Quality.BAD_COMM_LOST,
    ua.StatusCodes.BadServerNotConnected: Quality.BAD_COMM_LOST,
    ua.StatusCodes.BadNoCommunication: Quality.BAD_COMM_LOST,
    ua.StatusCodes.BadWaitingForInitialData: Quality.BAD_COMM_LOST,
    ua.StatusCodes.BadSensorFailure: Quality.BAD_SENSOR_FAILURE,
    ua.StatusCodes.BadDeviceFailure: Quality.BAD_DEVICE_EXCEPTION,
    ua.StatusCodes.BadOutOfRange: Quality.BAD_OUT_OF_RANGE,
    ua.StatusCodes.BadConfigurationError: Quality.BAD_CONFIGURATION,
    ua.StatusCodes.BadNodeIdUnknown: Quality.BAD_CONFIGURATION,
    ua.StatusCodes.BadNodeIdInvalid: Quality.BAD_CONFIGURATION,
    ua.StatusCodes.BadAttributeIdInvalid: Quality.BAD_CONFIGURATION,
}
_UNCERTAIN_QUALITIES = {
    ua.StatusCodes.UncertainLastUsableValue: Quality.UNCERTAIN_LAST_USABLE,
    ua.StatusCodes.UncertainSensorNotAccurate: Quality.UNCERTAIN_SENSOR_CAL,
}
# The low 16 bits carry info bits (overflow, limits), not the code itself.
_CODE_MASK = 0xFFFF0000


@dataclass(frozen=True)
class Conversion:
    """A sample, and why it is bad when it is."""

    sample: Sample
    reason: str = ""


def status_name(code):
    name, _doc = get_name_and_doc(code & _CODE_MASK)
    return name or f"0x{code:08X}"


def quality_of(code):
    """Return the quality of status ``code`` (an int)."""
    severity = code >> 30
    base = code & _CODE_MASK
    if severity == SEVERITY_GOOD:
        return Quality.GOOD
    if severity == SEVERITY_UNCERTAIN:
        return _UNCERTAIN_QUALITIES.get(base, Quality.UNCERTAIN)
    return _BAD_QUALITIES.get(base, Quality.BAD)


def source_time(data_value, received_at):
    """Return the source timestamp as aware UTC, else the server timestamp, else ``received_at``.

    asyncua returns naive datetimes that are UTC by the OPC UA encoding (Part 6 section 5.2.2.5).
    """
    when = data_value.SourceTimestamp or data_value.ServerTimestamp
    if when is None:
        return received_at
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def to_sample(point, data_value, received_at=None):
    """Convert ``data_value`` of ``point`` into a sample; Uncertain keeps the value, Bad drops it."""
    received_at = received_at or datetime.now(timezone.utc)
    code = data_value.StatusCode.value if data_value.StatusCode is not None else 0
    quality = quality_of(code)
    when = source_time(data_value, received_at)
    if quality >= Quality.BAD:
        return Conversion(Sample(point.sensor_id, when, None, quality), f"status {status_name(code)}")

    variant = data_value.Value
    value = variant.Value if variant is not None else None
    if isinstance(value, bool):
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        reason = f"value {value!r} of type {type(value).__name__} is not a number; point the node id at a numeric variable"
        return Conversion(Sample(point.sensor_id, when, None, Quality.BAD_CONFIGURATION), reason)
    if not math.isfinite(number):
        return Conversion(Sample(point.sensor_id, when, None, Quality.BAD_NOT_A_NUMBER), f"value {number} is not finite")
    return Conversion(Sample(point.sensor_id, when, point.to_engineering(number), quality))
