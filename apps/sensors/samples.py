from dataclasses import dataclass
from datetime import datetime

from .quality import Quality


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading on its way into storage: a sensor's value at a time, with its quality.

    ``time`` is the source timestamp when the protocol gives one, else the
    time the value was received; ingest converts it to UTC. ``value`` is None
    when the quality is bad and there is no usable number.
    """

    sensor_id: int
    time: datetime
    value: float | None
    quality: int = Quality.GOOD
