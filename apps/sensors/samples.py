from datetime import datetime
from typing import NamedTuple

from .quality import Quality


# A named tuple, because pollers make one per value: it is immutable like a frozen
# dataclass but built about 3.5 times faster (0.38 against 1.35 µs).
class Sample(NamedTuple):
    """One reading on its way into storage: a sensor's value at a time, with its quality.

    ``time`` is the source timestamp when the protocol gives one, else the
    time the value was received; ingest converts it to UTC. ``value`` is None
    when the quality is bad and there is no usable number.
    """

    sensor_id: int
    time: datetime
    value: float | None
    quality: int = Quality.GOOD


class SampleRun(NamedTuple):
    """Good-quality values of several sensors read at one time, kept as columns instead of a Sample each.

    A Modbus poll decodes the points of a block into one run, which the
    intake stream packs without building a Sample per value.
    ``sensor_id_bytes`` contains the sensor ids packed as little-endian int64,
    made once per read plan.
    """

    sensor_ids: tuple
    time: datetime
    values: list
    sensor_id_bytes: bytes


def expand_samples(items):
    """Return ``items`` (Samples and SampleRuns) as a list of Samples, runs expanded in place."""
    samples = []
    for item in items:
        if type(item) is SampleRun:
            time = item.time
            samples.extend(Sample(sensor_id, time, value) for sensor_id, value in zip(item.sensor_ids, item.values))
        else:
            samples.append(item)
    return samples


def count_samples(items):
    """Return the number of values in ``items`` (Samples and SampleRuns)."""
    return sum(len(item.values) if type(item) is SampleRun else 1 for item in items)
