"""Parsing of reading batches as JSON clients send them, into samples for ``ingest``.

The HTTP ingest endpoint uses it, and so can MQTT and CSV sources that carry
the same items: ``{"sensor": 12, "time": "2026-01-05T10:00:00Z", "value":
21.5, "quality": 0}``. A malformed item is rejected with its index and
reason while the valid items of the batch go on.
"""

from dataclasses import dataclass, field

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.sensors.timestamps import parse_timestamp

from .ingest import Rejection

ITEM_FIELDS = frozenset({"sensor", "time", "value", "quality"})
# Quality codes are OPC-style single bytes (see apps.sensors.quality).
MAX_QUALITY = 255
# Sensor ids are PostgreSQL bigint primary keys.
MAX_SENSOR_ID = 2**63 - 1


@dataclass
class ParsedBatch:
    """Samples parsed from a batch, with the request index of each, and the items rejected while parsing."""

    samples: list[Sample] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_readings(items):
    """Parse a list of reading items; return the samples and the rejections by index."""
    batch = ParsedBatch()
    for index, item in enumerate(items):
        try:
            sample = parse_reading(item)
        except ValueError as exc:
            sensor = item.get("sensor") if isinstance(item, dict) else None
            batch.rejected.append(Rejection(index, sensor, str(exc)))
            continue
        batch.samples.append(sample)
        batch.indexes.append(index)
    return batch


def parse_reading(item):
    """Return the ``Sample`` of one reading item; raise ValueError naming the field and value at fault."""
    if not isinstance(item, dict):
        raise ValueError(f'Reading {item!r} is not an object; send {{"sensor": id, "time": ..., "value": ...}}.')
    unknown = sorted(set(item) - ITEM_FIELDS)
    if unknown:
        raise ValueError(f"Unknown fields {', '.join(unknown)}; a reading has only sensor, time, value and quality.")
    missing = sorted(name for name in ("sensor", "time", "value") if name not in item)
    if missing:
        raise ValueError(f"Missing fields {', '.join(missing)}; a reading needs sensor, time and value.")

    sensor = item["sensor"]
    if isinstance(sensor, bool) or not isinstance(sensor, int) or not 0 < sensor <= MAX_SENSOR_ID:
        raise ValueError(f"Sensor {_shorten(sensor)} is not a sensor id; send the positive integer id of the sensor.")

    try:
        time = parse_timestamp(item["time"])
    except OverflowError:
        # A huge integer, or an ISO time whose offset moves it outside years 1 to 9999.
        raise ValueError(
            f"Timestamp {_shorten(item['time'])} is out of range; send a current time as epoch seconds or ISO 8601 with an offset."
        ) from None

    value = item["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"Value {_shorten(value)} is not a number; send a JSON number, or null with a bad quality.")
    try:
        value = None if value is None else float(value)
    except OverflowError:
        raise ValueError(f"Value {_shorten(value)} is too large for a double; send a smaller number.") from None

    quality = item.get("quality", int(Quality.GOOD))
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"Quality {quality!r} is not a quality code; send an integer from 0 to {MAX_QUALITY}.")

    # A non-finite value passes through: ingest stores it with bad quality and no value.
    return Sample(sensor, time, value, quality)


def _shorten(value, limit=40):
    """Return the repr of ``value`` cut to ``limit`` characters, so a rejection does not echo a huge input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
