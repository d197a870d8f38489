"""Modbus TCP server that publishes the simulated plant.

One pymodbus server listens for all units, and each unit responds on its own device id.
Coils, discrete inputs, holding registers and input registers are separate address
spaces, as in most PLCs. Registers that a client writes are overwritten at the next update.
"""

from __future__ import annotations

import asyncio
import logging

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from apps.protocols.modbus.codec import encode_value
from apps.protocols.simulator.plant import Plant, SimulatedPoint, SimulatedUnit

__all__ = ["PlantServer", "build_device", "encode_point", "serve_plant"]

logger = logging.getLogger(__name__)

# Order of the register types in the tuple that SimDevice expects for separate address spaces.
_REGISTER_TYPES = ("coil", "discrete", "holding", "input")

# pymodbus picks the datastore block from the function code, also for server-side writes.
_FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def encode_point(point: SimulatedPoint, value: float | bool) -> list[int] | list[bool]:
    """Encode an engineering value as the registers (or the coil state) of ``point``."""
    if point.register_type in ("coil", "discrete"):
        return [bool(value)]
    return encode_value(point.raw_value(value), point.data_type, point.byte_order)


def build_device(unit: SimulatedUnit, values: dict[str, float | bool]) -> SimDevice:
    """Build the pymodbus device of ``unit`` with its registers set from ``values``.

    Raises ValueError when the unit lacks a point of some register type, because
    SimDevice needs at least one entry in each address space.
    """
    blocks: dict[str, list[SimData]] = {register_type: [] for register_type in _REGISTER_TYPES}
    for point in unit.points:
        if point.register_type not in blocks:
            raise ValueError(
                f"Point {point.key!r} of {unit.name!r} has unknown register type {point.register_type!r}. "
                f"Use one of {', '.join(_REGISTER_TYPES)}."
            )
        registers = encode_point(point, values[point.key])
        datatype = DataType.BITS if point.register_type in ("coil", "discrete") else DataType.REGISTERS
        blocks[point.register_type].append(SimData(point.address, values=registers, datatype=datatype))

    missing = [register_type for register_type, block in blocks.items() if not block]
    if missing:
        raise ValueError(
            f"Unit {unit.name!r} has no point of register type {', '.join(missing)}. "
            "Add at least one point to each of coil, discrete, holding and input."
        )
    simdata = tuple(blocks[register_type] for register_type in _REGISTER_TYPES)
    return SimDevice(unit.device_id, simdata=simdata)


class PlantServer:
    """Modbus TCP server for a ``Plant`` that steps the plant every ``update_interval`` seconds.

    Pass ``port=0`` to let the operating system choose a free port, and read the bound
    port from ``port`` after ``start()``. The plant advances by ``update_interval``
    simulated seconds per update, so a seeded plant publishes the same sequence of values.
    """

    def __init__(self, plant: Plant | None = None, *, host: str = "127.0.0.1", port: int = 5020,
                 update_interval: float = 1.0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"Invalid port {port!r}. Pass 0 to 65535 (0 lets the system choose).")
        if update_interval <= 0:
            raise ValueError(f"Invalid update interval {update_interval!r}. Pass a number of seconds greater than 0.")
        self.plant = plant if plant is not None else Plant()
        self.host = host
        self.requested_port = port
        self.update_interval = update_interval
        self.update_count = 0
        self._server: ModbusTcpServer | None = None
        self._update_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """TCP port that the server is bound to. Raises RuntimeError before ``start()``."""
        if self._server is None or self._server.transport is None:
            raise RuntimeError("The plant server is not listening. Call start() first.")
        # NOTE: a host name that resolves to several addresses binds several sockets,
        # and with port 0 each may get another port. This returns the first.
        return self._server.transport.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Listen on ``host`` and ``port`` and start the periodic update."""
        if self._server is not None:
            raise RuntimeError("The plant server is already started.")
        devices = [build_device(unit, self.plant.values(unit)) for unit in self.plant.units]
        server = ModbusTcpServer(devices, address=(self.host, self.requested_port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus logs the OSError behind this as a warning and raises RuntimeError.
            raise OSError(
                f"Failed to listen on {self.host}:{self.requested_port}. Check that the port "
                "is free and that the address belongs to this host."
            ) from exc
        self._server = server
        self._update_task = asyncio.create_task(self._update_loop(), name="plant-simulator-update")
        logger.info(
            "Plant simulator started on %s:%d with device ids %s, updating every %.3g s",
            self.host, self.port, ", ".join(str(unit.device_id) for unit in self.plant.units),
            self.update_interval,
        )

    async def run(self) -> None:
        """Wait until the update loop ends, which happens only on cancellation or an error."""
        if self._update_task is None:
            raise RuntimeError("The plant server is not started. Call start() first.")
        await self._update_task

    async def stop(self) -> None:
        """Stop the update loop and close the server and its connections."""
        if self._server is None:
            return
        port = self.port
        if self._update_task is not None:
            self._update_task.cancel()
            try:
                await self._update_task
            except asyncio.CancelledError:
                pass
            self._update_task = None
        await self._server.shutdown()
        self._server = None
        logger.info("Plant simulator on %s:%d stopped after %d updates", self.host, port, self.update_count)

    async def __aenter__(self) -> PlantServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _update_loop(self) -> None:
        # Scheduling against the loop clock keeps the update rate from drifting.
        loop = asyncio.get_running_loop()
        next_update = loop.time()
        while True:
            next_update += self.update_interval
            await asyncio.sleep(max(0.0, next_update - loop.time()))
            self.plant.step(self.update_interval)
            await self._publish()
            self.update_count += 1

    async def _publish(self) -> None:
        assert self._server is not None
        for unit in self.plant.units:
            values = self.plant.values(unit)
            for point in unit.points:
                # One call per point, so a client never reads half of an updated value.
                await self._server.async_setValues(
                    unit.device_id,
                    _FUNCTION_CODES[point.register_type],
                    point.address,
                    encode_point(point, values[point.key]),
                )


async def serve_plant(host: str = "127.0.0.1", port: int = 5020, update_interval: float = 1.0,
                      seed: int | None = None, ready: asyncio.Event | None = None) -> None:
    """Serve a new ``Plant`` on Modbus TCP until cancelled.

    ``ready`` is set once the server listens. Cancelling the task stops the server.
    """
    server = PlantServer(Plant(seed=seed), host=host, port=port, update_interval=update_interval)
    await server.start()
    try:
        if ready is not None:
            ready.set()
        await server.run()
    finally:
        await server.stop()
