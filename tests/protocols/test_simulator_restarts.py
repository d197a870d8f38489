"""The plant simulator's --restart-every restarts every protocol server it runs, and clients see it."""

import asyncio
import logging
import queue

import paho.mqtt.client as mqtt
import pytest
from asyncua import Client
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

from apps.protocols.simulator.opcua_server import ENDPOINT_PATH, NAMESPACE_URI
from apps.protocols.simulator.server import serve_plant
from tests.protocols.conftest import MQTT_BROKER

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
MODBUS_PORT, OPCUA_PORT, DNP3_PORT = 21610, 21611, 21612
RESTART_EVERY = 4.0
DOWN_FOR = 1.5
# Seconds a client waits for a restart or for a server to come back. OPC UA builds its
# address space anew at each start, which takes a few seconds on a loaded machine.
WAIT_SECONDS = 30


async def wait_for_close(reader):
    """Return once the server closes the connection, reading and dropping whatever it sends."""
    while await reader.read(4096):
        pass


async def retry(action):
    """Return the result of ``action()`` once it stops raising OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        try:
            return await action()
        except (OSError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def read_modbus():
    client = AsyncModbusTcpClient(HOST, port=MODBUS_PORT, timeout=2, retries=0)
    try:
        if not await client.connect():
            raise OSError(f"Modbus server {HOST}:{MODBUS_PORT} refused the connection")
        response = await client.read_holding_registers(0, count=2, device_id=1)
        return response.registers
    finally:
        client.close()


async def read_opcua():
    client = Client(f"opc.tcp://{HOST}:{OPCUA_PORT}{ENDPOINT_PATH}", timeout=3)
    await client.connect()
    try:
        namespace = await client.get_namespace_index(NAMESPACE_URI)
        return await client.get_node(f"ns={namespace};s=1.return_temp").read_value()
    finally:
        await client.disconnect()


async def open_dnp3():
    _, writer = await asyncio.open_connection(HOST, DNP3_PORT)
    writer.close()
    return True


@pytest.fixture
def status_messages(topic_prefix):
    """Payloads of ``<prefix>/status`` as a subscriber on the shared Mosquitto receives them."""
    received = queue.SimpleQueue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _client, _userdata, message: received.put(message.payload.decode())
    client.on_connect = lambda client, *_: client.subscribe(f"{topic_prefix}/status", qos=1)
    client.connect(*MQTT_BROKER)
    client.loop_start()
    yield received
    # Remove the retained status, so the broker keeps nothing of this test.
    client.publish(f"{topic_prefix}/status", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


async def next_status(received, expected):
    """Wait until the status subscriber receives ``expected``, skipping other payloads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while loop.time() < deadline:
        try:
            if received.get_nowait() == expected:
                return True
        except queue.Empty:
            await asyncio.sleep(0.05)
    return False


@pytest.mark.asyncio
async def test_restart_every_restarts_each_protocol_server(topic_prefix, status_messages, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols.simulator")
    ready = asyncio.Event()
    serving = asyncio.create_task(serve_plant(
        host=HOST, port=MODBUS_PORT, update_interval=0.2, seed=11, ready=ready,
        restart_every=RESTART_EVERY, down_for=DOWN_FOR, mqtt_broker=MQTT_BROKER, mqtt_prefix=topic_prefix,
        opcua_port=OPCUA_PORT, dnp3_port=DNP3_PORT,
    ))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_SECONDS)
        assert await next_status(status_messages, "online")
        modbus_before = await read_modbus()
        opcua_before = await read_opcua()
        connections = {
            name: await asyncio.open_connection(HOST, port)
            for name, port in (("modbus", MODBUS_PORT), ("opcua", OPCUA_PORT), ("dnp3", DNP3_PORT))
        }

        closed = await asyncio.wait_for(
            asyncio.gather(*(wait_for_close(reader) for reader, _ in connections.values()), return_exceptions=True),
            WAIT_SECONDS,
        )
        saw_offline = await next_status(status_messages, "offline")
        saw_online_again = await next_status(status_messages, "online")
        modbus_after = await retry(read_modbus)
        opcua_after = await retry(read_opcua)
        dnp3_after = await retry(open_dnp3)
        for _, writer in connections.values():
            writer.close()
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    assert len(modbus_before) == 2
    assert isinstance(opcua_before, float)
    assert [result for result in closed if isinstance(result, Exception)] == []
    assert saw_offline
    assert saw_online_again
    assert len(modbus_after) == 2
    assert isinstance(opcua_after, float)
    assert dnp3_after
    log = caplog.text
    assert "restart 1: 4 protocol servers down" in log
    assert f"OPC UA server on opc.tcp://{HOST}:{OPCUA_PORT}{ENDPOINT_PATH} restarted" in log
    assert f"DNP3 outstation on {HOST}:{DNP3_PORT} restarted" in log
    assert "MQTT publisher reconnected" in log
    assert f"{HOST}:{MODBUS_PORT} listening again" in log
