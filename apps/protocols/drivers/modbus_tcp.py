"""Modbus TCP driver on the pymodbus asyncio client.

Nearby points of the same register table are read in one request of at most
125 registers (2000 bits). When a device rejects a block with an exception response,
the points of that block are read one by one, so that only the points the
device really rejects are marked bad. SunSpec scale-factor registers are read
in the same pass as the points that use them. A reply that cannot belong to its
request (transaction id 0, another function code, another item count) is never
in_struct as data: it fails the request like a transport error.
"""

import asyncio
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample, SampleRun

from ..choices import DataType, RegisterType
from ..modbus.codec import NOT_IMPLEMENTED_INTEGERS, decode_registers, encode_value, is_not_implemented
from .base import DeviceUnreachable, Driver, UnconfirmedWrite, WriteRejected, check_device_host, register_driver

logger = logging.getLogger(__name__)

BIT_REGISTER_TYPES = (RegisterType.COIL, RegisterType.DISCRETE)
READ_FUNCTION_CODES = {RegisterType.COIL: 1, RegisterType.DISCRETE: 2, RegisterType.HOLDING: 3, RegisterType.INPUT: 4}

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


# SunSpec limits scale factors to -10..10; 0x8000 (-32768) means "not implemented".
SCALE_FACTOR_RANGE = range(-10, 11)
SCALE_FACTOR_NOT_IMPLEMENTED = -0x8000

TRANSPORT_ERRORS = (ConnectionException, ModbusIOException, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class ScaleFactorRead:
    """A SunSpec scale-factor register (int16) that one or more points refer to."""

    register_type: str
    address: int
    register_count: int = 1


@dataclass
class ReadResult:
    """Words or bits read for one point, or the exception code of the device's response."""

    time: datetime
    values: list | None = None
    exception_code: int | None = None


@dataclass
class Block:
    register_type: str
    start: int
    count: int
    points: list
    # Structs that decode points straight from the reply's bytes (see ReadPlan), and how many points they decode.
    decoders: list = field(default_factory=list)
    decoded: int = 0
    # Byte layouts (_AS_SENT, _BYTES_SWAPPED) that the decoders read, so a poll packs only those.
    layouts: frozenset = frozenset()
    # Indexes into the plan's points of the points that the decoders decode.
    fast_positions: tuple = ()


def plan_blocks(points):
    """Group points into as few read requests as the request size limits allow."""
    blocks = []
    by_table = {}
    for point in points:
        by_table.setdefault(point.register_type, []).append(point)
    for register_type, table_points in by_table.items():
        limit = MAX_BITS_PER_REQUEST if register_type in BIT_REGISTER_TYPES else MAX_REGISTERS_PER_REQUEST
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


# struct codes of the numeric types the fast path decodes.
_STRUCT_CODES = {
    DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
    DataType.INT64: "q", DataType.UINT64: "Q", DataType.FLOAT32: "f", DataType.FLOAT64: "d",
}
_FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT64)
# Builds a Sample from a 4-tuple without the keyword handling of Sample(), which cost twice as much.
_new_tuple = tuple.__new__
_NO_MARKERS = frozenset()
# Register bytes as sent (big-endian words) or with the bytes of each word swapped. Read big- or
# little-endian, these two layouts give all four byte orders (see the codec's module docstring).
_AS_SENT, _BYTES_SWAPPED = 0, 1
_LAYOUTS = {
    "ABCD": (_AS_SENT, ">"), "DCBA": (_AS_SENT, "<"), "BADC": (_BYTES_SWAPPED, ">"), "CDAB": (_BYTES_SWAPPED, "<"),
}


class _Decoder(NamedTuple):
    index: int
    point: object
    sensor_id: int
    layout: int
    endian: str
    code: str
    byte_offset: int
    kind: str
    markers: frozenset
    bit: int | None
    scale: float
    offset: float


class _Unpacker(NamedTuple):
    """One struct that unpacks the raw values of several points of a block in one call.

    All its points are of one ``kind``: "integer", "float" or "bit". ``tests``
    contains the marker set of each integer point and the bit number of each bit point.
    ``markers`` is the union of the integer points' marker sets: a poll whose raw
    values contain none of them needs no check per value.
    """

    layout: int
    kind: str
    unpack_from: object
    decoders: tuple
    indexes: tuple
    sensor_ids: tuple
    tests: tuple
    scales: tuple
    offsets: tuple
    markers: frozenset
    # Whether every point has scale 1 and offset 0, so the raw values are the engineering values.
    unscaled: bool
    sensor_id_bytes: bytes


class ReadPlan:
    """The requests of one device's points and how to decode them, built once and reused for every poll.

    The poller keeps a plan for as long as the device's points are unchanged
    (apps.protocols.polling), so each poll only sends the requests and
    unpacks the points of a block with one struct call per byte order.
    Points that need more than that (bits of coils, SunSpec scale factors)
    are decoded by ``_sample``.
    """

    __slots__ = ("blocks", "points", "scale_factors", "slow_positions")

    def __init__(self, points):
        self.points = list(points)
        self.scale_factors = {
            (point.register_type, point.scale_factor_address): ScaleFactorRead(
                point.register_type, point.scale_factor_address
            )
            for point in self.points
            if point.scale_factor_address is not None
        }
        self.blocks = plan_blocks(self.points + list(self.scale_factors.values()))
        index = {id(point): position for position, point in enumerate(self.points)}
        for block in self.blocks:
            decoders = []
            for item in block.points:
                # Scale-factor registers are no points of their own.
                if id(item) not in index:
                    continue
                decoder = _decoder(index[id(item)], item, block.start)
                if decoder is not None:
                    decoders.append(decoder)
            block.decoded = len(decoders)
            block.decoders = _unpackers(decoders)
            block.layouts = frozenset(decoder.layout for decoder in decoders)
            block.fast_positions = tuple(decoder.index for decoder in decoders)
        fast = {position for block in self.blocks for position in block.fast_positions}
        # The points that _sample decodes after every read.
        self.slow_positions = tuple(position for position in range(len(self.points)) if position not in fast)


def _all_valid(unpacker, raws):
    """Return whether no raw value of ``unpacker`` is a 'not implemented' marker or NaN."""
    if unpacker.kind == "integer":
        # A marker of one point may be a valid value of another, which only costs the check per value.
        return unpacker.markers.isdisjoint(raws)
    if unpacker.kind == "float":
        return not any(map(math.isnan, raws))
    return True


def _engineering(unpacker, raws):
    """Return the engineering values of ``raws`` as floats, as _decode_each computes them."""
    if unpacker.kind == "bit":
        return [float((raw >> bit) & 1) for raw, bit in zip(raws, unpacker.tests)]
    if unpacker.unscaled:
        return list(map(float, raws))
    return [raw * scale + offset for raw, scale, offset in zip(raws, unpacker.scales, unpacker.offsets)]


def _decoder(index, point, block_start):
    """Return the fast decoder of ``point``, or None when ``_sample`` must decode it."""
    if point.register_type in BIT_REGISTER_TYPES or point.scale_factor_address is not None:
        return None
    if point.data_type == DataType.BIT:
        code, kind, markers = "H", "bit", _NO_MARKERS
    elif point.data_type in _FLOAT_TYPES:
        code, kind, markers = _STRUCT_CODES[point.data_type], "float", _NO_MARKERS
    elif point.data_type in _STRUCT_CODES:
        code, kind = _STRUCT_CODES[point.data_type], "integer"
        markers = NOT_IMPLEMENTED_INTEGERS.get(point.data_type, _NO_MARKERS)
    else:
        return None
    layout, endian = _LAYOUTS[point.byte_order]
    return _Decoder(
        index=index, point=point, sensor_id=point.sensor_id, layout=layout, endian=endian, code=code,
        byte_offset=(point.address - block_start) * 2, kind=kind, markers=markers,
        bit=point.bit if kind == "bit" else None,
        scale=float(point.scale), offset=float(point.offset),
    )


def _unpackers(decoders):
    """Group decoders by byte layout, endianness and kind into structs that skip the bytes between points.

    A point that overlaps the previous one of its group (such as several bits
    of one register) starts another struct, so each struct reads each byte once.
    """
    unpackers = []
    groups = {}
    for decoder in sorted(decoders, key=lambda decoder: decoder.byte_offset):
        groups.setdefault((decoder.layout, decoder.endian, decoder.kind), []).append(decoder)
    for (layout, endian, kind), members in groups.items():
        pending = list(members)
        while pending:
            fields, in_struct, overlapping, end = [], [], [], 0
            for decoder in pending:
                if decoder.byte_offset < end:
                    overlapping.append(decoder)
                    continue
                if decoder.byte_offset > end:
                    fields.append(f"{decoder.byte_offset - end}x")
                fields.append(decoder.code)
                in_struct.append(decoder)
                end = decoder.byte_offset + struct.calcsize(endian + decoder.code)
            sensor_ids = tuple(decoder.sensor_id for decoder in in_struct)
            unpackers.append(_Unpacker(
                layout=layout, kind=kind, unpack_from=struct.Struct(endian + "".join(fields)).unpack_from,
                decoders=tuple(in_struct), indexes=tuple(decoder.index for decoder in in_struct),
                sensor_ids=sensor_ids,
                tests=tuple(decoder.bit if kind == "bit" else decoder.markers for decoder in in_struct),
                scales=tuple(decoder.scale for decoder in in_struct), offsets=tuple(decoder.offset for decoder in in_struct),
                markers=frozenset().union(*(decoder.markers for decoder in in_struct)),
                unscaled=all(decoder.scale == 1.0 and decoder.offset == 0.0 for decoder in in_struct),
                sensor_id_bytes=struct.pack(f"<{len(sensor_ids)}q", *sensor_ids),
            ))
            pending = overlapping
    return unpackers


@register_driver
class ModbusTcpDriver(Driver):
    protocol = "modbus_tcp"

    def __init__(self, device, *, client=None):
        """``client`` is a connected client of a pool (apps.protocols.modbus.pool), which close() leaves open."""
        super().__init__(device)
        self.client = None
        self._owns_client = True
        if client is not None:
            self.attach(client)

    def attach(self, client):
        """Use ``client``, a connected client of a pool, for the following requests; close() leaves it open."""
        self.client = client
        self._owns_client = False

    async def connect(self):
        if self.client is not None and self.client.connected:
            return
        if self._owns_client:
            ip_address = await check_device_host(self.device)
            if self.client is not None:
                self.client.close()
            # pymodbus resolves the host it was made with on every connect, so the client gets the checked
            # address. The client binds to the running event loop, so it is made here and not in __init__.
            self.client = AsyncModbusTcpClient(
                ip_address, port=self.device.port, timeout=self.device.timeout, retries=0, reconnect_delay=0
            )
        started = time.monotonic()
        try:
            connected = await self.client.connect()
        except (OSError, ConnectionException) as exc:
            raise DeviceUnreachable(f"Cannot connect to {self.device.host}:{self.device.port}: {exc}") from exc
        if not connected:
            # pymodbus reports a failed connect only as False, so the elapsed time shows the cause.
            if time.monotonic() - started < self.device.timeout:
                reason = "connection refused or host unreachable"
            else:
                reason = f"no response within {self.device.timeout:g} s"
            raise DeviceUnreachable(f"Cannot connect to {self.device.host}:{self.device.port}: {reason}.")

    async def close(self):
        if self.client is not None and self._owns_client:
            self.client.close()

    @classmethod
    def prepare(cls, points):
        """Return the ReadPlan of ``points``, which read() takes in place of the points."""
        return ReadPlan(points)

    async def read(self, points):
        """Read ``points`` (a list of points or the ReadPlan of one) and return a Sample per point, in order."""
        plan, replies = await self._read_replies(points)
        return self._decode_replies(plan, replies, None)

    async def poll(self, points):
        """Read ``points`` like read(), but return the good values that a block decodes at once as SampleRuns."""
        plan, replies = await self._read_replies(points)
        runs = []
        samples = self._decode_replies(plan, replies, runs)
        # Samples are non-empty tuples, so filter(None) drops only the positions that went into runs.
        runs.extend(filter(None, samples))
        return runs

    async def _read_replies(self, points):
        self.point_errors = {}
        plan = points if isinstance(points, ReadPlan) else ReadPlan(points)
        return plan, [await self._read_plan_block(block) for block in plan.blocks]

    def _decode_replies(self, plan, replies, runs):
        """Return the Sample of each point by position, None where ``runs`` (a list) took the value instead."""
        samples = [None] * len(plan.points)
        # Keyed by id() because unsaved points have no hash.
        results = {}
        slow_positions = plan.slow_positions
        for block, reply in zip(plan.blocks, replies):
            if isinstance(reply, dict):
                results.update(reply)
                # The block was read point by point, so its points are decoded one by one too.
                slow_positions = slow_positions + block.fast_positions
            else:
                results.update(self._decode_block(block, reply, samples, runs) or {})
        for position in slow_positions:
            point = plan.points[position]
            scale_factor_read = plan.scale_factors.get((point.register_type, point.scale_factor_address))
            scale_factor_result = results[id(scale_factor_read)] if scale_factor_read else None
            samples[position] = self._sample(point, results[id(point)], scale_factor_result)
        return samples

    async def _read_plan_block(self, block):
        """Return (time, registers or bits) of a block read without an exception, else ReadResults by id()."""
        response = await self._request(block.register_type, block.start, block.count)
        if response.isError():
            return await self._read_block(block, response)
        now = datetime.now(timezone.utc)
        return now, (response.bits if block.register_type in BIT_REGISTER_TYPES else response.registers)

    def _decode_block(self, block, reply, samples, runs=None):
        """Decode the points of a block read without an exception; return the ReadResults that _sample needs.

        Fills ``samples`` by position. With a ``runs`` list, the values of an
        unpacker whose raw values contain no marker and no NaN go into one SampleRun there instead.
        """
        now, values = reply
        if block.decoded == len(block.points):
            results = None
        else:
            results = {}
            for item in block.points:
                offset = item.address - block.start
                results[id(item)] = ReadResult(now, values=list(values[offset:offset + item.register_count]))
        if block.decoders:
            count = len(values)
            buffers = (
                struct.pack(f">{count}H", *values) if _AS_SENT in block.layouts else None,
                struct.pack(f"<{count}H", *values) if _BYTES_SWAPPED in block.layouts else None,
            )
            for unpacker in block.decoders:
                raws = unpacker.unpack_from(buffers[unpacker.layout])
                if runs is not None and _all_valid(unpacker, raws):
                    runs.append(SampleRun(unpacker.sensor_ids, now, _engineering(unpacker, raws), unpacker.sensor_id_bytes))
                else:
                    self._decode_each(unpacker, raws, block, values, now, samples)
        return results

    def _decode_each(self, unpacker, raws, block, values, now, samples):
        """Fill ``samples`` with a Sample per point of ``unpacker``, bad ones included."""
        good = Quality.GOOD
        rows = zip(unpacker.indexes, unpacker.sensor_ids, unpacker.tests, unpacker.scales, unpacker.offsets, raws)
        # One loop per kind keeps the per-value work to a comparison, a multiply and a Sample.
        if unpacker.kind == "integer":
            for index, sensor_id, markers, scale, offset, raw in rows:
                if raw in markers:
                    samples[index] = self._not_implemented(unpacker.decoders, index, block, values, now)
                else:
                    samples[index] = _new_tuple(Sample, (sensor_id, now, raw * scale + offset, good))
        elif unpacker.kind == "float":
            for index, sensor_id, _, scale, offset, raw in rows:
                # Only NaN differs from itself; the comparison skips a call to math.isnan per value.
                if raw != raw:  # noqa: PLR0124
                    samples[index] = self._not_implemented(unpacker.decoders, index, block, values, now)
                else:
                    samples[index] = _new_tuple(Sample, (sensor_id, now, raw * scale + offset, good))
        else:
            for index, sensor_id, bit, _, _, raw in rows:
                samples[index] = _new_tuple(Sample, (sensor_id, now, float((raw >> bit) & 1), good))

    def _not_implemented(self, decoders, index, block, values, now):
        point = next(decoder.point for decoder in decoders if decoder.index == index)
        offset = point.address - block.start
        registers = list(values[offset:offset + point.register_count])
        return self._bad(
            point, now, Quality.BAD_NOT_IMPLEMENTED,
            f"registers {_hex(registers)} are the 'not implemented' marker of {point.data_type}",
        )

    async def _read_block(self, block, response=None):
        """Read one block (or take its ``response``) and return a ReadResult for each of its items, keyed by id()."""
        if response is None:
            response = await self._request(block.register_type, block.start, block.count)
        now = datetime.now(timezone.utc)
        if not response.isError():
            values = response.bits if block.register_type in BIT_REGISTER_TYPES else response.registers
            return {
                id(item): ReadResult(
                    now, values=list(values[item.address - block.start : item.address - block.start + item.register_count])
                )
                for item in block.points
            }
        if len(block.points) == 1:
            return {id(block.points[0]): ReadResult(now, exception_code=response.exception_code)}
        logger.debug(
            "Device %s (id %s) rejected block %s %d+%d (code %s); reading its points one by one",
            self.device.name, self.device.id, block.register_type, block.start, block.count, response.exception_code,
        )
        results = {}
        for item in block.points:
            results.update(
                await self._read_block(Block(item.register_type, item.address, item.register_count, [item]))
            )
        return results

    async def _request(self, register_type, address, count):
        unit = self.device.unit_id
        try:
            if register_type == RegisterType.HOLDING:
                response = await self.client.read_holding_registers(address, count=count, device_id=unit)
            elif register_type == RegisterType.INPUT:
                response = await self.client.read_input_registers(address, count=count, device_id=unit)
            elif register_type == RegisterType.COIL:
                response = await self.client.read_coils(address, count=count, device_id=unit)
            elif register_type == RegisterType.DISCRETE:
                response = await self.client.read_discrete_inputs(address, count=count, device_id=unit)
            else:
                raise ValueError(f"Unknown register type {register_type!r}; use holding, input, coil or discrete.")
        except TRANSPORT_ERRORS as exc:
            raise DeviceUnreachable(
                f"No response from {self.device.host}:{self.device.port} unit {unit} "
                f"to {register_type} {address}+{count}: {exc}"
            ) from exc
        mismatch = _reply_mismatch(response, register_type, count)
        if mismatch:
            raise DeviceUnreachable(
                f"Reply from {self.device.host}:{self.device.port} unit {unit} to {register_type} {address}+{count} "
                f"does not belong to the request: {mismatch}; the connection is dropped."
            )
        return response

    def _sample(self, point, result, scale_factor_result):
        if result.exception_code is not None:
            return self._bad(point, result.time, Quality.BAD_DEVICE_EXCEPTION, _exception_text(result.exception_code))

        if point.register_type in BIT_REGISTER_TYPES:
            return Sample(point.sensor_id, result.time, float(bool(result.values[0])), Quality.GOOD)

        registers = result.values
        # A status word of a non-SunSpec device may have all 16 bits set, so bits skip the marker check.
        if point.data_type != DataType.BIT and is_not_implemented(registers, point.data_type, point.byte_order):
            return self._bad(
                point, result.time, Quality.BAD_NOT_IMPLEMENTED,
                f"registers {_hex(registers)} are the 'not implemented' marker of {point.data_type}",
            )

        scale_factor = 0
        if scale_factor_result is not None:
            scale_factor, quality, reason = _scale_factor(point, scale_factor_result)
            if reason:
                return self._bad(point, result.time, quality, reason)

        raw = decode_registers(registers, point.data_type, point.byte_order, bit=point.bit)
        return Sample(point.sensor_id, result.time, point.to_engineering(raw, scale_factor), Quality.GOOD)

    def _bad(self, point, now, quality, reason):
        message = f"{point.register_type} {point.address}: {reason}"
        self.point_errors[point.pk] = message
        logger.warning(
            "Device %s (id %s) point %s (sensor %s): %s", self.device.name, self.device.id, point.pk,
            point.sensor_id, message,
        )
        return Sample(point.sensor_id, now, None, quality)

    async def write(self, point, value):
        if point.register_type in (RegisterType.INPUT, RegisterType.DISCRETE):
            raise ValueError(
                f"{point.register_type} {point.address} is read-only; write to a holding register or coil."
            )
        if point.register_type == RegisterType.COIL:
            await self._checked(self.client.write_coil(point.address, bool(value), device_id=self.device.unit_id),
                                point, "write")
            return float(bool(value))
        if point.data_type == DataType.BIT:
            return await self._write_bit(point, bool(value))

        scale_factor = await self._read_scale_factor(point) if point.scale_factor_address is not None else 0
        raw = point.to_raw(value, scale_factor)
        if point.data_type not in (DataType.FLOAT32, DataType.FLOAT64):
            raw = round(raw)
        registers = encode_value(raw, point.data_type, point.byte_order)
        unit = self.device.unit_id
        if len(registers) == 1:
            request = self.client.write_register(point.address, registers[0], device_id=unit)
        else:
            request = self.client.write_registers(point.address, registers, device_id=unit)
        await self._checked(request, point, "write")
        return point.to_engineering(decode_registers(registers, point.data_type, point.byte_order), scale_factor)

    async def _write_bit(self, point, state):
        """Set one bit by reading its register and writing it back, which changes no other bit.

        NOTE: a write to the same register by another master between the read and the write is lost.
        Mask write (function 22) would avoid that, but many devices do not implement it.
        """
        unit = self.device.unit_id
        # _request rejects a reply that belongs to no request, which would change the other bits.
        response = await self._checked(self._request(RegisterType.HOLDING, point.address, 1), point, "read before write")
        word = response.registers[0]
        mask = 1 << point.bit
        # BADC stores the register with its two bytes swapped, so bit n sits at n ^ 8.
        if point.byte_order in ("BADC", "DCBA"):
            mask = 1 << (point.bit ^ 8)
        word = (word | mask) if state else (word & ~mask & 0xFFFF)
        await self._checked(self.client.write_register(point.address, word, device_id=unit), point, "write")
        return float(state)

    async def _read_scale_factor(self, point):
        response = await self._checked(
            self._request(point.register_type, point.scale_factor_address, 1), point, "scale-factor read"
        )
        scale_factor, _, reason = _scale_factor(point, ReadResult(None, values=list(response.registers)))
        if reason:
            raise WriteRejected(f"Cannot scale the setpoint for {point.register_type} {point.address}: {reason}.")
        return scale_factor

    async def _checked(self, request, point, action):
        """Await a request and return its response; raise on a transport error or an exception response.

        A write that fails after it was sent raises UnconfirmedWrite. pymodbus 3.16 raises
        ConnectionException only before it sends (not connected, or the reconnect failed). A timeout
        or a reply to another request comes after the request left, so the device may have executed it.
        """
        is_write = action == "write"
        target = f"{point.register_type} {point.address} on device {self.device.name}"
        try:
            response = await request
        except ConnectionException as exc:
            raise DeviceUnreachable(f"{action.capitalize()} of {target} failed before it was sent: {exc}") from exc
        except TRANSPORT_ERRORS as exc:
            if is_write:
                raise UnconfirmedWrite(
                    f"Write of {target} was sent, but no response confirmed it ({exc}), so the device may have "
                    "executed it. Read the register before writing again."
                ) from exc
            raise DeviceUnreachable(f"{action.capitalize()} of {target} failed: {exc}") from exc
        if response.transaction_id == 0:
            message = (
                f"Reply from device {self.device.name} to the {action} of {point.register_type} {point.address} "
                "has transaction id 0, which matches no request of this client; the connection is dropped."
            )
            if is_write:
                raise UnconfirmedWrite(f"{message} The device may have executed the write; read the register first.")
            raise DeviceUnreachable(message)
        if response.isError():
            raise WriteRejected(
                f"Device {self.device.name} rejected the {action} of {point.register_type} {point.address} "
                f"with {_exception_text(response.exception_code)}."
            )
        return response


def _scale_factor(point, result):
    """Return (scale factor, quality, reason); the reason is empty when the scale factor is usable."""
    address = point.scale_factor_address
    if result.exception_code is not None:
        return 0, Quality.BAD_DEVICE_EXCEPTION, (
            f"scale-factor register {address} answered {_exception_text(result.exception_code)}"
        )
    scale_factor = decode_registers(result.values, "int16")
    if scale_factor == SCALE_FACTOR_NOT_IMPLEMENTED:
        return 0, Quality.BAD_NOT_IMPLEMENTED, f"scale-factor register {address} is not implemented (0x8000)"
    if scale_factor not in SCALE_FACTOR_RANGE:
        return 0, Quality.BAD_CONFIGURATION, (
            f"scale-factor register {address} holds {scale_factor}, outside the SunSpec range -10 to 10; "
            "check scale_factor_address"
        )
    return scale_factor, Quality.GOOD, ""


def _reply_mismatch(response, register_type, count):
    """Return why ``response`` cannot be the reply to a read of ``count`` items, or "" when it can.

    pymodbus 3.16 skips replies whose transaction id differs from the request's, but it lets
    id 0 through. Its TCP client never sends id 0, so such a reply is stale or another client's.
    """
    if response.transaction_id == 0:
        return "transaction id 0 matches no request of this client"
    expected_code = READ_FUNCTION_CODES[register_type]
    if response.function_code & 0x7F != expected_code:
        return f"function code {response.function_code} answers no function {expected_code} request"
    if response.isError():
        return ""
    if register_type in BIT_REGISTER_TYPES:
        # Bits arrive in whole bytes, so up to 7 padding bits follow the requested ones.
        received, fits = len(response.bits), count <= len(response.bits) < count + 8
    else:
        received, fits = len(response.registers), len(response.registers) == count
    if not fits:
        return f"{received} values for {count} requested"
    return ""


def _exception_text(code):
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown exception code')})"


def _hex(registers):
    return "[" + ", ".join(f"0x{word:04X}" for word in registers) + "]"
