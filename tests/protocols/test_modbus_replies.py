"""Late, foreign and malformed Modbus TCP replies, sent by a scripted server on loopback, are never taken as data."""

import asyncio
import struct

import pytest

from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.modbus_tcp import ModbusTcpDriver
from apps.protocols.models import Device, Point
from apps.sensors.quality import Quality
from tests.conftest import ServerThread, free_port_in

pytestmark = pytest.mark.asyncio

# Ports of this module's servers; other suites running beside it use other ranges.
PORTS = range(22330, 22360)
TIMEOUT = 1.0


def port_in_range():
    return free_port_in(PORTS)


def reply(value, *, delay=0.0, transaction_id=None, function_code=None, count=None):
    """One scripted read reply: the value of every register, when to send it, and what to get wrong."""
    return {"value": value, "delay": delay, "transaction_id": transaction_id, "function_code": function_code,
            "count": count, "echo": False}


def echo(*, transaction_id=None):
    """One scripted write reply, which repeats the request as a device does to confirm a single-register write."""
    return {**reply(0, transaction_id=transaction_id), "echo": True}


class ScriptedServer:
    """A Modbus TCP server that replies to the n-th read request with the n-th list of scripted replies."""

    def __init__(self, script):
        self.script = list(script)
        self.port = port_in_range()
        self.requests = []
        self.thread = None

    def start(self):
        async def serve(ready):
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await asyncio.Event().wait()

        self.thread = ServerThread(serve).start()
        return self

    def stop(self):
        self.thread.stop()

    async def _handle(self, reader, writer):
        try:
            while True:
                header = await reader.readexactly(7)
                transaction_id, _protocol, length, unit = struct.unpack(">HHHB", header)
                request = await reader.readexactly(length - 1)
                # Reads and single writes both carry an address and a 16-bit count or value after the function code.
                function_code, address, count = struct.unpack(">BHH", request[:5])
                index = len(self.requests)
                self.requests.append((transaction_id, function_code, address, count))
                replies = self.script[index] if index < len(self.script) else []
                # Replies go out on their own schedule, so a late one may cross the next request.
                for planned in replies:
                    asyncio.create_task(self._send(writer, planned, transaction_id, unit, request))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _send(self, writer, planned, transaction_id, unit, request):
        await asyncio.sleep(planned["delay"])
        if planned["echo"]:
            pdu = request
        else:
            function_code, _address, count = struct.unpack(">BHH", request[:5])
            registers = [planned["value"]] * (planned["count"] if planned["count"] is not None else count)
            pdu = struct.pack(">BB", planned["function_code"] or function_code, 2 * len(registers))
            pdu += b"".join(struct.pack(">H", register) for register in registers)
        sent_id = transaction_id if planned["transaction_id"] is None else planned["transaction_id"]
        try:
            writer.write(struct.pack(">HHHB", sent_id, 0, len(pdu) + 1, unit) + pdu)
            await writer.drain()
        except ConnectionError:
            pass  # The client dropped the connection first, which some tests expect.


@pytest.fixture
def scripted_server():
    servers = []

    def start(*script):
        servers.append(ScriptedServer(script).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def make_driver(server):
    device = Device(id=1, name="Scripted device", host="127.0.0.1", port=server.port, unit_id=1, timeout=TIMEOUT)
    return ModbusTcpDriver(device)


POINT = Point(id=1, sensor_id=1001, register_type="holding", address=10, data_type="uint16")


async def test_correct_reply_is_read(scripted_server):
    server = scripted_server([reply(222)])

    async with make_driver(server) as driver:
        [sample] = await driver.read([POINT])

    assert sample.value == 222
    assert sample.quality == Quality.GOOD
    assert server.requests[0][1:] == (3, 10, 1)


async def test_late_reply_not_taken_for_next_request(scripted_server):
    # The reply to the first request arrives 0.3 s after its timeout, while the second request waits for 0.6 s.
    server = scripted_server([reply(111, delay=TIMEOUT + 0.3)], [reply(222, delay=0.6)])

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable):
            await driver.read([POINT])
        [sample] = await driver.read([POINT])

    assert [request[0] for request in server.requests] == [1, 2]
    assert sample.value == 222
    assert sample.quality == Quality.GOOD


async def test_foreign_transaction_id_skipped(scripted_server):
    server = scripted_server([reply(999, transaction_id=4242), reply(222, delay=0.1)])

    async with make_driver(server) as driver:
        [sample] = await driver.read([POINT])

    assert sample.value == 222


async def test_transaction_id_zero_rejected(scripted_server):
    server = scripted_server([reply(999, transaction_id=0)])

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable, match="transaction id 0 matches no request"):
            await driver.read([POINT])


async def test_other_function_code_rejected(scripted_server):
    server = scripted_server([reply(999, function_code=4)])

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable, match="function code 4 answers no function 3 request"):
            await driver.read([POINT])


async def test_wrong_register_count_rejected(scripted_server):
    server = scripted_server([reply(999, count=2)])

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable, match="2 values for 1 requested"):
            await driver.read([POINT])


async def test_write_ack_with_transaction_id_zero_rejected(scripted_server):
    server = scripted_server([echo(transaction_id=0)])

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable, match="transaction id 0"):
            await driver.write(POINT, 5)

    assert server.requests[0][1:] == (6, 10, 5)


async def test_bit_write_stops_after_foreign_read_reply(scripted_server):
    # A stale register value written back would change the other 15 bits.
    server = scripted_server([reply(0xFFFF, transaction_id=0)], [echo()])
    bit_point = Point(id=2, sensor_id=1002, register_type="holding", address=10, data_type="bit", bit=3)

    async with make_driver(server) as driver:
        with pytest.raises(DeviceUnreachable, match="transaction id 0 matches no request"):
            await driver.write(bit_point, 1)

    assert [request[1] for request in server.requests] == [3]


async def test_bit_write_changes_only_its_bit(scripted_server):
    server = scripted_server([reply(0x6481)], [echo()])
    bit_point = Point(id=2, sensor_id=1002, register_type="holding", address=10, data_type="bit", bit=3)

    async with make_driver(server) as driver:
        written = await driver.write(bit_point, 1)

    assert written == 1.0
    assert server.requests[1][1:] == (6, 10, 0x6489)
