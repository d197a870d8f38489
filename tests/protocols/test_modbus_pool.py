"""Pooled Modbus TCP connections across polls, counted on a pymodbus server on loopback."""

import asyncio
import logging
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from apps.protocols.modbus.pool import ModbusConnectionPool, poll_loop, stop_poll_loop
from apps.protocols.models import Device
from apps.protocols.polling import poll_device, poll_due_devices
from apps.sensors.samples import expand_samples
from tests.conftest import ServerThread, free_port_in
from tests.factories import DeviceFactory, PointFactory, SensorFactory

# Ports of this module's servers; other suites running beside it use other ranges.
PORTS = range(21550, 21580)


def port_in_range():
    return free_port_in(PORTS)


class CountingServer:
    """A Modbus server (unit 1, 10 holding registers) that counts the connections it accepts and loses."""

    def __init__(self, port=None):
        self.port = port or port_in_range()
        self.lock = threading.Lock()
        self.opened = 0
        self.closed = 0
        self.thread = None

    def on_connect(self, connected):
        with self.lock:
            if connected:
                self.opened += 1
            else:
                self.closed += 1

    def start(self):
        async def serve(ready):
            device = SimDevice(1, simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=list(range(10)), datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * 10, datatype=DataType.REGISTERS)],
            ))
            server = ModbusTcpServer(device, address=("127.0.0.1", self.port), trace_connect=self.on_connect)
            await server.serve_forever(background=True)
            ready.set()
            try:
                await asyncio.Event().wait()
            finally:
                await server.shutdown()

        self.thread = ServerThread(serve)
        self.thread.start()
        return self

    def stop(self):
        self.thread.stop()

    def wait_for(self, condition, timeout=5):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"server saw {self.opened} connections opened and {self.closed} closed")
            time.sleep(0.02)


@pytest.fixture
def server():
    handle = CountingServer().start()
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def fresh_poll_loop():
    """Start each test with a new poll loop and close its connections afterwards, as worker shutdown does."""
    stop_poll_loop("test start")
    yield
    stop_poll_loop("test end")


def polled_device(server, **fields):
    device = DeviceFactory(port=server.port, timeout=1.0, **fields)
    PointFactory(device=device, sensor=SensorFactory(minimum=0, maximum=100), register_type="holding",
                 address=3, data_type="uint16")
    return device


def poll_now(device):
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))
    return poll_due_devices()


def test_polls_share_one_connection(alpha, server, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols.modbus.pool")
    device = polled_device(server)

    summaries = [poll_now(device) for _ in range(5)]

    assert [summary.failed for summary in summaries] == [0] * 5
    assert [summary.samples for summary in summaries] == [1] * 5
    assert server.opened == 1
    assert server.closed == 0
    assert caplog.text.count(f"device {device.pk}: opened a Modbus TCP connection to 127.0.0.1:{server.port}") == 1


def test_server_restart_recovered_next_poll(alpha, server, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols")
    device = polled_device(server)
    assert poll_now(device).failed == 0

    server.stop()
    restarted = CountingServer(port=server.port).start()
    try:
        summary = poll_now(device)
    finally:
        restarted.stop()

    assert summary.failed == 0
    assert summary.samples == 1
    assert restarted.opened == 1
    assert f"device {device.pk}: reopened the Modbus TCP connection" in caplog.text or (
        f"device {device.pk}: pooled connection failed" in caplog.text
    )


def test_config_change_reopens(alpha, server, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols.modbus.pool")
    device = polled_device(server)
    poll_now(device)
    poll_now(device)

    Device.objects.filter(pk=device.pk).update(timeout=2.0)
    poll_now(device)
    server.wait_for(lambda: server.closed == 1)

    assert server.opened == 2
    assert f"device {device.pk}: connection settings changed" in caplog.text

    other = CountingServer().start()
    try:
        Device.objects.filter(pk=device.pk).update(port=other.port)
        assert poll_now(device).failed == 0
        server.wait_for(lambda: server.closed == 2)
    finally:
        other.stop()
    assert other.opened == 1


def test_unreachable_device_drops_connection(alpha, server):
    device = polled_device(server)
    poll_now(device)
    server.stop()

    summary = poll_now(device)

    assert summary.failed == 1
    assert Device.objects.get(pk=device.pk).status == "offline"
    assert poll_loop().pool.connections == {}


def test_worker_shutdown_closes_connections(alpha, server, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols.modbus.pool")
    device = polled_device(server)
    poll_now(device)

    stop_poll_loop("worker process shutdown")

    server.wait_for(lambda: server.closed == 1)
    assert "(worker process shutdown)" in caplog.text
    assert poll_now(device).failed == 0
    assert server.opened == 2


@pytest.mark.asyncio
async def test_idle_connection_closed(server):
    device = Device(id=7, name="Idle", host="127.0.0.1", port=server.port, timeout=1.0)
    device.enabled_points = []
    pool = ModbusConnectionPool(idle_seconds=0.2)

    async with pool.lease("alpha", device) as connection:
        assert connection.client.connected
    await asyncio.sleep(0.6)

    assert pool.connections == {}
    await asyncio.to_thread(server.wait_for, lambda: server.closed == 1)
    pool.close_all("test end")


@pytest.mark.asyncio
async def test_concurrent_polls_take_turns(server):
    device = Device(id=8, name="Busy", host="127.0.0.1", port=server.port, timeout=1.0)
    device.enabled_points = [
        PointFactory.build(id=1, device=device, sensor_id=1, register_type="holding", address=3, data_type="uint16")
    ]
    pool = ModbusConnectionPool()
    holders = []
    active = []
    overlaps = []

    async def poll():
        async with pool.lease("alpha", device) as connection:
            holders.append(connection)
            active.append(connection)
            overlaps.append(len(active))
            await asyncio.sleep(0.05)
            active.remove(connection)
        return await poll_device(device, pool=pool, schema="alpha")

    outcomes = await asyncio.gather(poll(), poll(), poll())

    assert overlaps == [1, 1, 1]
    assert [outcome.error for outcome in outcomes] == ["", "", ""]
    assert [expand_samples(outcome.samples)[0].value for outcome in outcomes] == [3.0, 3.0, 3.0]
    assert len({id(connection) for connection in holders}) == 1
    assert server.opened == 1
    pool.close_all("test end")
