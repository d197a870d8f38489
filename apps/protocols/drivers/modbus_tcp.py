"""Modbus TCP driver on the pymodbus asyncio client.

Nearby points of the same register table are read in one request of at most
125 registers (2000 bits). When a device answers a block with an exception,
the points of that block are read one by one, so that only the points the
device really rejects are marked bad.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from apps.telemetry.quality import Quality
from apps.telemetry.samples import Sample

from ..choices import DataType, RegisterType
from ..modbus.codec import decode_registers, encode_value, is_not_implemented
from .base import DeviceUnreachable, Driver, register_driver

logger = logging.getLogger(__name__)

MAX_REGISTERS_PER_REQUEST = 125
MAX_BITS_PER_REQUEST = 2000
# Reading a few unused registers is cheaper than another round trip.
MAX_GAP = 8

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass
class Block:
    register_type: str
    start: int
    count: int
    points: list


def plan_blocks(points):
    """Group points into as few read requests as the request size limits allow."""
    blocks = []
    by_table = {}
    for point in points:
        by_table.setdefault(point.register_type, []).append(point)
    for register_type, table_points in by_table.items():
        limit = MAX_BITS_PER_REQUEST if register_type in (RegisterType.COIL, RegisterType.DISCRETE) else MAX_REGISTERS_PER_REQUEST
        table_points.sort(key=lambda point: point.address)
        current = None
        for point in table_points:
            end = point.address + point.register_count
            if current and point.address - (current.start + current.count) <= MAX_GAP and end - current.start <= limit:
                current.count = max(current.count, end - current.start)
                current.points.append(point)
            else:
                current = Block(register_type, point.address, point.register_count, [point])
                blocks.append(current)
    return blocks


@register_driver
class ModbusTcpDriver(Driver):
    protocol = "modbus_tcp"

    def __init__(self, device):
        super().__init__(device)
        self.client = AsyncModbusTcpClient(
            device.host, port=device.port, timeout=device.timeout, retries=0, reconnect_delay=0
        )

    async def connect(self):
        if self.client.connected:
            return
        try:
            connected = await self.client.connect()
        except (OSError, ConnectionException) as exc:
            raise DeviceUnreachable(f"Cannot connect to {self.device.host}:{self.device.port}: {exc}") from exc
        if not connected:
            raise DeviceUnreachable(
                f"Cannot connect to {self.device.host}:{self.device.port} within {self.device.timeout} s."
            )

    async def close(self):
        self.client.close()

    async def read(self, points):
        samples = []
        for block in plan_blocks(points):
            samples.extend(await self._read_block(block))
        return samples

    async def _read_block(self, block):
        response = await self._request(block.register_type, block.start, block.count)
        now = datetime.now(timezone.utc)
        if not response.isError():
            return [self._decode(point, response, block.start, now) for point in block.points]
        if len(block.points) == 1:
            return [self._exception_sample(block.points[0], response, now)]
        logger.debug(
            "Device %s rejected block %s %d+%d (code %s); reading its points one by one",
            self.device.name, block.register_type, block.start, block.count, response.exception_code,
        )
        samples = []
        for point in block.points:
            samples.extend(await self._read_block(Block(point.register_type, point.address, point.register_count, [point])))
        return samples

    async def _request(self, register_type, address, count):
        unit = self.device.unit_id
        try:
            if register_type == RegisterType.HOLDING:
                return await self.client.read_holding_registers(address, count=count, device_id=unit)
            if register_type == RegisterType.INPUT:
                return await self.client.read_input_registers(address, count=count, device_id=unit)
            if register_type == RegisterType.COIL:
                return await self.client.read_coils(address, count=count, device_id=unit)
            if register_type == RegisterType.DISCRETE:
                return await self.client.read_discrete_inputs(address, count=count, device_id=unit)
        except (ConnectionException, ModbusIOException, asyncio.TimeoutError, OSError) as exc:
            raise DeviceUnreachable(
                f"No response from {self.device.host}:{self.device.port} unit {unit} "
                f"to {register_type} {address}+{count}: {exc}"
            ) from exc
        raise ValueError(f"Unknown register type {register_type!r}; use holding, input, coil or discrete.")

    def _decode(self, point, response, block_start, now):
        offset = point.address - block_start
        if point.register_type in (RegisterType.COIL, RegisterType.DISCRETE):
            return Sample(point.sensor_id, now, float(bool(response.bits[offset])), Quality.GOOD)
        registers = response.registers[offset : offset + point.register_count]
        if point.data_type != DataType.BIT and is_not_implemented(registers, point.data_type, point.byte_order):
            return Sample(point.sensor_id, now, None, Quality.BAD_NOT_IMPLEMENTED)
        raw = decode_registers(registers, point.data_type, point.byte_order, bit=point.bit)
        return Sample(point.sensor_id, now, point.to_engineering(raw), Quality.GOOD)

    def _exception_sample(self, point, response, now):
        code = response.exception_code
        logger.warning(
            "Device %s answered %s %d with exception %s (%s)",
            self.device.name, point.register_type, point.address, code, EXCEPTION_NAMES.get(code, "unknown"),
        )
        return Sample(point.sensor_id, now, None, Quality.BAD_DEVICE_EXCEPTION)

    async def write(self, point, value):
        unit = self.device.unit_id
        if point.register_type in (RegisterType.INPUT, RegisterType.DISCRETE):
            raise ValueError(f"{point.register_type} {point.address} is read-only; write to a holding register or coil.")
        try:
            if point.register_type == RegisterType.COIL:
                response = await self.client.write_coil(point.address, bool(value), device_id=unit)
            else:
                raw = (value - point.offset) / point.scale
                if point.data_type not in (DataType.FLOAT32, DataType.FLOAT64):
                    raw = round(raw)
                registers = encode_value(raw, point.data_type, point.byte_order)
                response = await self.client.write_registers(point.address, registers, device_id=unit)
        except (ConnectionException, ModbusIOException, asyncio.TimeoutError, OSError) as exc:
            raise DeviceUnreachable(f"Write to {self.device.name} {point.address} failed: {exc}") from exc
        if response.isError():
            code = response.exception_code
            raise ValueError(
                f"Device {self.device.name} rejected the write to {point.register_type} {point.address} "
                f"with exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})."
            )
