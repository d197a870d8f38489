"""The interface every protocol driver implements, and the registry that finds them.

A driver turns protocol frames into samples and takes setpoint writes. It
knows nothing of storage, alarms or pages, and it is handed plain device and
point objects that were fully loaded before it runs, so it never touches the
database.
"""

from abc import ABC, abstractmethod

_drivers = {}


class DeviceUnreachable(Exception):
    """The device did not answer: refused connection, timeout or broken link."""


class Driver(ABC):
    protocol = None

    def __init__(self, device):
        self.device = device

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    @abstractmethod
    async def connect(self):
        """Open the connection; raise DeviceUnreachable when the device does not answer."""

    @abstractmethod
    async def read(self, points):
        """Read ``points`` and return one Sample per point, bad ones included."""

    @abstractmethod
    async def write(self, point, value):
        """Write an engineering ``value`` to ``point``."""

    @abstractmethod
    async def close(self):
        """Close the connection; safe to call when it is already closed."""


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
