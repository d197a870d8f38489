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
    if isinstance(sensor, bool) or not isinstance(sensor, int) or sensor <= 0:
        raise ValueError(f"Sensor {sensor!r} is not a sensor id; send the positive integer id of the sensor.")

    time = parse_timestamp(item["time"])

    value = item["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"Value {value!r} is not a number; send a JSON number, or null with a bad quality.")

    quality = item.get("quality", int(Quality.GOOD))
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"Quality {quality!r} is not a quality code; send an integer from 0 to {MAX_QUALITY}.")

    # A non-finite value passes through: ingest stores it with bad quality and no value.
    return Sample(sensor, time, None if value is None else float(value), quality)
