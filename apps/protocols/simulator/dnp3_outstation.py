"""DNP3 outstation of the simulated plant (yadnp3), with event buffers and unsolicited responses on.

Numeric points are analog inputs and states binary inputs, numbered across the plant in unit
order and then point order (``index_of`` gives the index). Link addresses are 10 for the
outstation and 1 for the master. A point with a NaN or exception fault is reported with the
COMM_LOST flag instead of ONLINE, as an RTU reports a failed field input.
"""

from __future__ import annotations

import asyncio
import logging
import math

import opendnp3

from apps.protocols.simulator.faults import FaultInjector
from apps.protocols.simulator.plant import Plant

__all__ = ["MASTER_ADDRESS", "OUTSTATION_ADDRESS", "PlantDnp3Outstation"]

logger = logging.getLogger(__name__)

MASTER_ADDRESS = 1
OUTSTATION_ADDRESS = 10
EVENT_BUFFER_SIZE = 200
# Flag bits of IEEE 1815 measurement flags: ONLINE (0x01) and COMM_LOST (0x04).
ONLINE = 0x01
COMM_LOST = 0x04


class _CommandHandler(opendnp3.ICommandHandler):
    """Command handler with no Select or Operate of its own, because the simulator has no outputs."""

    def Begin(self):
        pass

    def End(self):
        pass


class PlantDnp3Outstation:
    """Serves a Plant (or FaultInjector) as one DNP3 outstation on a TCP port; call ``update()`` after each step."""

    def __init__(self, plant: Plant | FaultInjector, *, host: str = "127.0.0.1", port: int = 20000) -> None:
        if not 0 < port <= 65535:
            raise ValueError(f"Invalid DNP3 port {port!r}. Pass 1 to 65535.")
        self.plant = plant
        self.host = host
        self.port = port
        self._indexes: dict[tuple[int, str], tuple[str, int]] = {}
        counts = {"analog_input": 0, "binary_input": 0}
        for unit in plant.units:
            for key, value in plant.values(unit).items():
                point_type = "binary_input" if isinstance(value, bool) else "analog_input"
                self._indexes[unit.device_id, key] = (point_type, counts[point_type])
                counts[point_type] += 1
        self._size = max(counts.values())
        self._manager = None
        self._outstation = None
        self._keep = ()
        self._restarting = False

    def index_of(self, device_id: int, key: str) -> tuple[str, int]:
        """Return the (DNP3 point type, index) of a plant point."""
        return self._indexes[device_id, key]

    def start(self) -> None:
        manager = opendnp3.DNP3Manager(1)
        listener = opendnp3.IChannelListener()
        channel = manager.AddTCPServer(
            "plant-simulator", opendnp3.LogLevels(0), opendnp3.ServerAcceptMode.CloseExisting,
            opendnp3.IPEndpoint(self.host, self.port), listener,
        )
        config = opendnp3.OutstationStackConfig(opendnp3.DatabaseConfig(self._size))
        # Without event buffers an outstation reports no events at all.
        config.outstation.eventBufferConfig = opendnp3.EventBufferConfig.AllTypes(EVENT_BUFFER_SIZE)
        config.outstation.params.allowUnsolicited = True
        config.link.LocalAddr = OUTSTATION_ADDRESS
        config.link.RemoteAddr = MASTER_ADDRESS
        handler, application = _CommandHandler(), opendnp3.IOutstationApplication()
        outstation = channel.AddOutstation("plant-simulator", handler, application, config)
        outstation.Enable()
        # The bindings keep no reference to the Python callbacks, so this object does.
        self._keep = (listener, handler, application, channel)
        self._manager, self._outstation = manager, outstation
        self.update()
        logger.info("Plant simulator serving DNP3 on %s:%d (outstation %d)", self.host, self.port, OUTSTATION_ADDRESS)

    def update(self) -> None:
        if self._outstation is None:
            if self._restarting:
                return
            raise RuntimeError("The DNP3 outstation is not started. Call start() first.")
        builder = opendnp3.UpdateBuilder()
        for unit in self.plant.units:
            failing = self.plant.exception_keys(unit) if isinstance(self.plant, FaultInjector) else set()
            for key, value in self.plant.values(unit).items():
                point_type, index = self._indexes[unit.device_id, key]
                failed = key in failing or (not isinstance(value, bool) and math.isnan(value))
                flags = opendnp3.Flags(COMM_LOST if failed else ONLINE)
                if point_type == "binary_input":
                    builder.Update(opendnp3.Binary(bool(value), flags), index)
                else:
                    builder.Update(opendnp3.Analog(0.0 if math.isnan(value) else float(value), flags), index)
        self._outstation.Apply(builder.Build())

    def stop(self) -> None:
        if self._manager is None:
            return
        manager, self._manager, self._outstation = self._manager, None, None
        manager.Shutdown()
        self._keep = ()
        logger.info("Plant simulator stopped serving DNP3 on %s:%d", self.host, self.port)

    async def restart(self, down_for: float) -> None:
        """Shut the outstation down, which closes the master's connection, and start it again after ``down_for`` s.

        The new outstation has empty event buffers, as a restarted RTU has.
        """
        if self._outstation is None and not self._restarting:
            raise RuntimeError("The DNP3 outstation is not started. Call start() first.")
        # Until a start succeeds, update() skips its writes and the next restart tries again.
        self._restarting = True
        # Stop and start block the event loop briefly, but never run while update() does.
        self.stop()
        logger.info("Plant simulator DNP3 outstation on %s:%d down for %.3g s", self.host, self.port, down_for)
        await asyncio.sleep(down_for)
        self.start()
        self._restarting = False
        logger.info("Plant simulator DNP3 outstation on %s:%d restarted", self.host, self.port)
