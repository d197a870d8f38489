"""The interface every protocol driver implements, and the registry that finds them.

A driver turns protocol frames into samples and takes setpoint writes. It
imports nothing of storage, alarms or pages. It gets device and point
objects that were fully loaded before it runs, so it never queries the
database.
"""

import asyncio
from abc import ABC, abstractmethod
from datetime import datetime, timezone

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample

from ..validators import ForbiddenHostError, check_resolved_host

_drivers = {}


class DeviceUnreachable(Exception):
    """The device did not respond: refused connection, timeout or broken link."""


async def check_device_host(device):
    """Resolve the device's host and return the address to connect to. Raise DeviceUnreachable when there is none.

    Saving a device rejects forbidden addresses, but a host name can resolve to one later (e.g. the
    link-local metadata address), so every connect checks again. Drivers connect to the returned
    address and not to the name, because a second lookup could return another address (DNS rebinding).
    """
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, check_resolved_host, device.host, device.port)
    except ForbiddenHostError as exc:
        raise DeviceUnreachable(str(exc)) from exc
    except OSError as exc:
        raise DeviceUnreachable(
            f"Resolving host {device.host!r} of device {device.pk} failed: {exc}. Check the host name or give an address."
        ) from exc


class WriteRejected(Exception):
    """The device rejected a write with an error response, so the setpoint was not taken."""


class UnconfirmedWrite(DeviceUnreachable):
    """The write request may have reached the device, but no response confirmed it, so its outcome is unknown.

    Drivers raise it for a timeout or a lost connection after the request was sent, and for a response
    that belongs to no request. A failure before anything was sent stays a plain DeviceUnreachable.
    """


class Driver(ABC):
    protocol = None

    def __init__(self, device):
        self.device = device
        # Why each point of the last read() got bad quality, by point id, for Point.last_error.
        self.point_errors = {}
        # The device's response to the last write() where the protocol has one, e.g. a DNP3 command status.
        self.write_response = None

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    @abstractmethod
    async def connect(self):
        """Open the connection; raise DeviceUnreachable when the device does not respond."""

    @classmethod
    def prepare(cls, points):
        """Return what read() takes for ``points``, prepared once so that repeated reads cost less.

        The poller keeps the result for as long as the points are unchanged. This
        default returns the points; the Modbus TCP driver returns a read plan.
        """
        return list(points)

    @abstractmethod
    async def read(self, points):
        """Read ``points`` (or what prepare() made of them) and return one Sample per point, bad ones included."""

    async def poll(self, points):
        """Read ``points`` for the poller and return their Samples and SampleRuns, in no particular order.

        This default returns read(). A driver that decodes many values at once
        returns them as SampleRuns, which the intake stream packs without a Sample per value.
        """
        return await self.read(points)

    @abstractmethod
    async def write(self, point, value):
        """Write an engineering ``value`` to ``point`` and return the value the device should now hold.

        The returned value is ``value`` after encoding, so it differs where the point's data type
        cannot represent ``value`` exactly (rounded integers, float32). Raise WriteRejected when
        the device rejects the write, ValueError when ``value`` cannot be encoded, DeviceUnreachable
        when nothing was sent, and UnconfirmedWrite when the request may have been sent but no
        response arrived.
        """

    def expected_read_back(self, point, written):
        """Return the value ``point`` should read after write() returned ``written``; None to check quality only."""
        return written

    @abstractmethod
    async def close(self):
        """Close the connection; safe to call when it is already closed."""


class SubscriptionDriver(Driver):
    """A driver whose device or broker pushes values, run by the gateway instead of the poller.

    ``schema`` is the tenant schema the connection belongs to; drivers use it in client ids
    and log messages, never to reach the database.
    """

    def __init__(self, device, *, schema=""):
        super().__init__(device)
        self.schema = schema
        # Whether the connection is up now, and whether it was up at any time since connect().
        self.connected = False
        self.was_connected = False

    async def read(self, points):
        """Return the latest value received for each point since connect; bad for points with none yet.

        Subclasses that keep received samples in ``self.latest`` (sensor id to Sample) get this for free.
        """
        self.point_errors = {}
        samples = []
        now = datetime.now(timezone.utc)
        for point in points:
            sample = getattr(self, "latest", {}).get(point.sensor_id)
            if sample is None:
                self.point_errors[point.pk] = self.missing_value_reason(point)
                sample = Sample(point.sensor_id, now, None, Quality.BAD)
            samples.append(sample)
        return samples

    def missing_value_reason(self, point):
        return "no value received since the gateway connected"

    @abstractmethod
    async def run(self, points, deliver):
        """Deliver samples of ``points`` as they arrive until the connection fails.

        Call ``deliver(samples)`` from the event loop. Return only when cancelled; raise
        DeviceUnreachable when the connection is lost, so the gateway can reconnect with back-off.
        Keep ``connected`` and ``was_connected`` up to date.
        """


def register_driver(cls):
    """Class decorator that makes a driver available for its ``protocol``."""
    if cls.protocol in _drivers and _drivers[cls.protocol] is not cls:
        raise ValueError(f"Protocol {cls.protocol!r} already has driver {_drivers[cls.protocol].__name__}.")
    _drivers[cls.protocol] = cls
    return cls


def get_driver(protocol):
    try:
        return _drivers[protocol]
    except KeyError:
        raise LookupError(
            f"No driver is registered for protocol {protocol!r}; known protocols: {sorted(_drivers)}."
        ) from None
