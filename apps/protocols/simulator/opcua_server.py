"""OPC UA server of the simulated plant (asyncua, security mode None).

Each unit is an object under Objects, e.g. "Boiler 1", with one variable per point. Node ids
are ``ns=<index of urn:thermacore:simulator>;s=<device id>.<point key>``, e.g.
``ns=2;s=1.supply_temp``. Values are Double, states Boolean. A point with an exception fault
keeps its last value with status BadDeviceFailure, as a server whose field device failed would.
"""

from __future__ import annotations

import asyncio
import logging

from asyncua import Server, ua

from apps.protocols.simulator.faults import FaultInjector
from apps.protocols.simulator.plant import Plant

__all__ = ["NAMESPACE_URI", "PlantOpcUaServer"]

logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:thermacore:simulator"
ENDPOINT_PATH = "/thermacore/simulator/"


class PlantOpcUaServer:
    """Serves the points of a Plant (or FaultInjector) as OPC UA variables, updated by ``update()``."""

    def __init__(self, plant: Plant | FaultInjector, *, host: str = "127.0.0.1", port: int = 4840) -> None:
        if not 0 < port <= 65535:
            raise ValueError(f"Invalid OPC UA port {port!r}. Pass 1 to 65535.")
        self.plant = plant
        self.host = host
        self.port = port
        self.namespace_index: int | None = None
        self._server: Server | None = None
        self._nodes: dict[tuple[int, str], ua.NodeId] = {}
        self._restarting = False

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    def node_id(self, device_id: int, key: str) -> str:
        return f"ns={self.namespace_index};s={device_id}.{key}"

    async def start(self) -> None:
        """Build the address space and listen; building the standard nodes takes a few seconds."""
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("ThermaCore plant simulator")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        for unit in self.plant.units:
            folder = await server.nodes.objects.add_object(self.namespace_index, unit.name)
            for key, value in self.plant.values(unit).items():
                node_id = ua.NodeId(f"{unit.device_id}.{key}", self.namespace_index)
                await folder.add_variable(node_id, key, _variant(value))
                self._nodes[unit.device_id, key] = node_id
        await server.start()
        self._server = server
        logger.info("Plant simulator serving OPC UA on %s", self.url)

    async def update(self) -> None:
        """Write the current value of every point, or BadDeviceFailure for points with an exception fault."""
        if self._server is None:
            if self._restarting:
                return
            raise RuntimeError("The OPC UA server is not started. Call start() first.")
        # restart() may stop the server between two writes, so the rest go to the old address space.
        server, nodes = self._server, self._nodes
        for unit in self.plant.units:
            failing = self.plant.exception_keys(unit) if isinstance(self.plant, FaultInjector) else set()
            for key, value in self.plant.values(unit).items():
                status = ua.StatusCodes.BadDeviceFailure if key in failing else ua.StatusCodes.Good
                data_value = ua.DataValue(_variant(value), StatusCode=ua.StatusCode(status))
                await server.write_attribute_value(nodes[unit.device_id, key], data_value)

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.stop()
        logger.info("Plant simulator stopped serving OPC UA on %s", self.url)

    async def restart(self, down_for: float) -> None:
        """Stop the server, which closes every session, stay away for ``down_for`` seconds, then serve again.

        The address space is built anew, so clients must reconnect and subscribe again.
        """
        if self._server is None and not self._restarting:
            raise RuntimeError("The OPC UA server is not started. Call start() first.")
        # Until a start succeeds, update() skips its writes and the next restart tries again.
        self._restarting = True
        await self.stop()
        logger.info("Plant simulator OPC UA server on %s down for %.3g s", self.url, down_for)
        await asyncio.sleep(down_for)
        self._nodes = {}
        await self.start()
        self._restarting = False
        logger.info("Plant simulator OPC UA server on %s restarted", self.url)


def _variant(value: float | bool) -> ua.Variant:
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    return ua.Variant(float(value), ua.VariantType.Double)
