"""Modbus TCP server that publishes the simulated plant.

One pymodbus server listens for all units, and each unit responds on its own device id.
Coils, discrete inputs, holding registers and input registers are separate address
spaces, as in most PLCs. Registers that a client writes are overwritten at the next update.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from apps.protocols.modbus.codec import encode_value
from apps.protocols.simulator.dnp3_outstation import PlantDnp3Outstation
from apps.protocols.simulator.faults import FaultInjector, PointFault
from apps.protocols.simulator.mqtt_publisher import PlantMqttPublisher
from apps.protocols.simulator.opcua_server import PlantOpcUaServer
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


def build_device(unit: SimulatedUnit, values: dict[str, float | bool],
                 unmapped: set[str] | frozenset[str] = frozenset()) -> SimDevice:
    """Build the pymodbus device of ``unit`` with its registers set from ``values``.

    Points whose keys are in ``unmapped`` get no registers, so reading them gets exception 2.
    Raises ValueError when the unit lacks a point of some register type, because
    SimDevice needs at least one entry in each address space.
    """
    blocks: dict[str, list[SimData]] = {register_type: [] for register_type in _REGISTER_TYPES}
    for point in unit.points:
        if point.key in unmapped:
            continue
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

    def __init__(self, plant: Plant | FaultInjector | None = None, *, host: str = "127.0.0.1", port: int = 5020,
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
        # Functions or coroutine functions called after each plant update, e.g. PlantMqttPublisher.publish.
        self.update_listeners: list = []
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
        await self._listen(self.requested_port)
        self._update_task = asyncio.create_task(self._update_loop(), name="plant-simulator-update")
        logger.info(
            "Plant simulator started on %s:%d with device ids %s, updating every %.3g s",
            self.host, self.port, ", ".join(str(unit.device_id) for unit in self.plant.units),
            self.update_interval,
        )

    async def restart(self, down_for: float) -> None:
        """Close the server and its connections, stay away for ``down_for`` seconds, then listen again.

        The plant keeps running meanwhile, as a device that restarts its communication module would.
        """
        if self._update_task is None:
            raise RuntimeError("The plant server is not started. Call start() first.")
        if self._server is not None:
            self.requested_port = self.port
            server, self._server = self._server, None
            await server.shutdown()
        # A failed listen leaves the server away until the next restart, while the plant keeps running.
        port = self.requested_port
        logger.info("Plant simulator on %s:%d disconnected for %.3g s", self.host, port, down_for)
        await asyncio.sleep(down_for)
        await self._listen(port)
        logger.info("Plant simulator on %s:%d listening again", self.host, port)

    async def _listen(self, port: int) -> None:
        devices = [
            build_device(unit, self.plant.values(unit), _unmapped_keys(self.plant, unit)) for unit in self.plant.units
        ]
        server = ModbusTcpServer(devices, address=(self.host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus logs the OSError behind this as a warning and raises RuntimeError.
            raise OSError(
                f"Failed to listen on {self.host}:{port}. Check that the port "
                "is free and that the address belongs to this host."
            ) from exc
        self._server = server

    async def run(self) -> None:
        """Wait until the update loop ends, which happens only on cancellation or an error."""
        if self._update_task is None:
            raise RuntimeError("The plant server is not started. Call start() first.")
        await self._update_task

    async def stop(self) -> None:
        """Stop the update loop and close the server and its connections."""
        if self._server is None and self._update_task is None:
            return
        port = self.port if self._server is not None else self.requested_port
        if self._update_task is not None:
            self._update_task.cancel()
            try:
                await self._update_task
            except asyncio.CancelledError:
                pass
            self._update_task = None
        # The server is away when stop() comes during a restart.
        if self._server is not None:
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
            for listener in self.update_listeners:
                result = listener()
                if inspect.isawaitable(result):
                    await result
            self.update_count += 1

    async def _publish(self) -> None:
        if self._server is None:
            # Disconnected by restart(); the plant still advances.
            return
        for unit in self.plant.units:
            values = self.plant.values(unit)
            unmapped = _unmapped_keys(self.plant, unit)
            for point in unit.points:
                if point.key in unmapped:
                    continue
                # One call per point, so a client never reads half of an updated value.
                await self._server.async_setValues(
                    unit.device_id,
                    _FUNCTION_CODES[point.register_type],
                    point.address,
                    encode_point(point, values[point.key]),
                )


def _unmapped_keys(plant: Plant | FaultInjector, unit: SimulatedUnit) -> set[str]:
    return plant.exception_keys(unit) if isinstance(plant, FaultInjector) else set()


async def serve_plant(host: str = "127.0.0.1", port: int = 5020, update_interval: float = 1.0,
                      seed: int | None = None, ready: asyncio.Event | None = None,
                      faults: tuple[PointFault, ...] = (), restart_every: float | None = None,
                      down_for: float = 5.0, mqtt_broker: tuple[str, int] | None = None,
                      mqtt_prefix: str = "thermacore/sim", opcua_port: int | None = None,
                      dnp3_port: int | None = None) -> None:
    """Serve a new ``Plant`` on Modbus TCP until cancelled, with ``faults`` applied.

    With ``restart_every`` every protocol server disconnects every that many seconds and serves
    again after ``down_for`` seconds, and the MQTT publisher reconnects. With ``mqtt_broker`` (host, port) every update is also published
    there under ``mqtt_prefix``. With ``opcua_port`` and ``dnp3_port`` it is also served over
    OPC UA and DNP3 on those ports of ``host``. ``ready`` is set once the servers listen. Cancelling the task
    stops the server.
    """
    plant = Plant(seed=seed)
    source = FaultInjector(plant, faults) if faults else plant
    server = PlantServer(source, host=host, port=port, update_interval=update_interval)
    publisher = None
    if mqtt_broker is not None:
        publisher = PlantMqttPublisher(source, host=mqtt_broker[0], port=mqtt_broker[1], prefix=mqtt_prefix)
        await publisher.start()
        server.update_listeners.append(publisher.publish)
    opcua = None
    if opcua_port is not None:
        opcua = PlantOpcUaServer(source, host=host, port=opcua_port)
        await opcua.start()
        server.update_listeners.append(opcua.update)
    outstation = None
    if dnp3_port is not None:
        outstation = PlantDnp3Outstation(source, host=host, port=dnp3_port)
        outstation.start()
        server.update_listeners.append(outstation.update)
    await server.start()
    restarts = None
    if restart_every is not None:
        # Every protocol server goes down and comes back at the same moments, like a device that reboots.
        services = [service for service in (server, opcua, outstation, publisher) if service is not None]
        restarts = asyncio.create_task(_restart_periodically(services, restart_every, down_for))
    try:
        if ready is not None:
            ready.set()
        await server.run()
    finally:
        if restarts is not None:
            restarts.cancel()
        await server.stop()
        if publisher is not None:
            await publisher.stop()
        if opcua is not None:
            await opcua.stop()
        if outstation is not None:
            outstation.stop()


async def _restart_periodically(services: list, every: float, down_for: float) -> None:
    """Restart every service each ``every`` seconds; a failed restart is logged and tried again next time."""
    count = 0
    while True:
        await asyncio.sleep(every)
        count += 1
        logger.info("Plant simulator restart %d: %d protocol servers down for %.3g s", count, len(services), down_for)
        results = await asyncio.gather(*(service.restart(down_for) for service in services), return_exceptions=True)
        for service, result in zip(services, results):
            if isinstance(result, Exception):
                logger.error("Plant simulator restart %d of %s failed: %s", count, type(service).__name__, result)
