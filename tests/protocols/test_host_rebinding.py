"""Drivers connect to the address that the host check returned, so a DNS answer that changes afterwards is never used.

A fake getaddrinfo replaces DNS. It resolves the device's host name first to
127.0.0.1, where a real peer listens, and then to "::", an address no device
may have. A driver that looked the name up again would connect to [::], where
nothing listens, and fail. Every other name goes to the real resolver, and all
traffic stays on loopback.
"""

import asyncio
import socket

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from apps.audit.services import Actor
from apps.protocols.certificates import import_certificate
from apps.protocols.drivers.base import DeviceUnreachable, check_device_host
from apps.protocols.drivers.modbus_tcp import ModbusTcpDriver
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.modbus.pool import ConnectFailed, ModbusConnectionPool
from apps.protocols.models import Device
from apps.protocols.validators import ForbiddenHostError, check_resolved_host
from tests.conftest import ServerThread, free_port_in
from tests.protocols.conftest import UNIT_ID, OpcUaTestServer, PrivateBroker
from tests.protocols.pki import make_pki

# Ports of this module's peers; other suites running beside it use other ranges.
PORTS = range(24200, 24300)
HOST_NAME = "plc.rebinding.invalid"
CHECKED_ADDRESS = "127.0.0.1"
FORBIDDEN_ADDRESS = "::"
ACTOR = Actor.system_job("tests.host_rebinding")


class RebindingResolver:
    """A getaddrinfo that resolves HOST_NAME to CHECKED_ADDRESS once and to FORBIDDEN_ADDRESS after that."""

    def __init__(self, real_getaddrinfo):
        self.real_getaddrinfo = real_getaddrinfo
        self.lookups = 0

    def __call__(self, host, port, *args, **kwargs):
        if host != HOST_NAME:
            return self.real_getaddrinfo(host, port, *args, **kwargs)
        self.lookups += 1
        answer = CHECKED_ADDRESS if self.lookups == 1 else FORBIDDEN_ADDRESS
        return self.real_getaddrinfo(answer, port, *args, **kwargs)


@pytest.fixture
def rebinding_resolver(monkeypatch):
    resolver = RebindingResolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


def fixed_answers(*addresses):
    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in addresses]

    return getaddrinfo


def test_check_returns_first_allowed_address(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fixed_answers("169.254.169.254", "10.0.0.5", "10.0.0.6"))

    assert check_resolved_host(HOST_NAME, 502) == "10.0.0.5"


def test_check_rejects_only_forbidden_addresses(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", fixed_answers("169.254.169.254", "224.0.0.1"))

    with pytest.raises(ForbiddenHostError, match="resolves only to 169.254.169.254, 224.0.0.1"):
        check_resolved_host(HOST_NAME, 502)


def test_check_returns_literal_address():
    assert check_resolved_host("::1", 502) == "::1"


def test_unresolvable_host_unreachable(monkeypatch):
    def getaddrinfo(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    device = Device(id=3, name="Unknown", protocol="modbus_tcp", host=HOST_NAME, port=502)

    with pytest.raises(DeviceUnreachable, match=f"Resolving host '{HOST_NAME}' of device 3 failed: .*Name or service not known"):
        asyncio.run(check_device_host(device))


@pytest.fixture
def modbus_peer():
    port = free_port_in(PORTS)

    async def serve(ready):
        registers = SimData(0, values=[0] * 10, datatype=DataType.REGISTERS)
        bits = SimData(0, values=[False] * 16, datatype=DataType.BITS)
        server = ModbusTcpServer(
            SimDevice(UNIT_ID, simdata=([bits], [bits], [registers], [registers])), address=("127.0.0.1", port)
        )
        await server.serve_forever(background=True)
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await server.shutdown()

    thread = ServerThread(serve).start()
    yield port
    thread.stop()


def test_modbus_pool_connects_checked_address(alpha, rebinding_resolver, modbus_peer):
    device = Device.objects.create(name="Rebinding PLC", protocol="modbus_tcp", host=HOST_NAME, port=modbus_peer,
                                   timeout=2.0)
    pool = ModbusConnectionPool()

    async def read_then_reconnect():
        async with pool.lease("alpha", device) as connection:
            response = await connection.client.read_holding_registers(0, count=2, device_id=UNIT_ID)
        lookups_at_read = rebinding_resolver.lookups
        # The name now resolves to a forbidden address, which the next connect's check must catch.
        pool.discard("alpha", device, "test reconnect")
        reconnect_error = ""
        try:
            async with pool.lease("alpha", device):
                pass
        except ConnectFailed as exc:
            reconnect_error = str(exc)
        pool.close_all("test finished")
        return response.registers, lookups_at_read, reconnect_error

    registers, lookups_at_read, reconnect_error = asyncio.run(read_then_reconnect())

    assert registers == [0, 0]
    # The host check made the only lookup; the client never resolved the name itself.
    assert lookups_at_read == 1
    assert "resolves only to ::" in reconnect_error


def test_modbus_driver_connects_checked_address(rebinding_resolver, modbus_peer):
    device = Device(id=42, name="Rebinding meter", protocol="modbus_tcp", host=HOST_NAME, port=modbus_peer,
                    unit_id=UNIT_ID, timeout=2.0)

    async def read_then_reconnect():
        async with ModbusTcpDriver(device) as driver:
            response = await driver.client.read_holding_registers(0, count=2, device_id=UNIT_ID)
        lookups_at_read = rebinding_resolver.lookups
        # A connection of its own checks the name again, which now resolves to a forbidden address.
        try:
            async with ModbusTcpDriver(device):
                pass
        except DeviceUnreachable as exc:
            return response.registers, lookups_at_read, str(exc)
        return response.registers, lookups_at_read, ""

    registers, lookups_at_read, reconnect_error = asyncio.run(read_then_reconnect())

    assert registers == [0, 0]
    assert lookups_at_read == 1
    assert "resolves only to ::" in reconnect_error


@pytest.fixture
def mqtt_peer(tmp_path):
    broker = PrivateBroker(tmp_path)
    broker.port = free_port_in(PORTS)
    broker.config.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker.start()
    yield broker
    broker.stop()


def test_mqtt_connects_checked_address(rebinding_resolver, mqtt_peer):
    device = Device(id=41, name="Rebinding broker", protocol="mqtt", host=HOST_NAME, port=mqtt_peer.port,
                    timeout=2.0, qos=1, client_id="tc-rebinding-test")
    peer = asyncio.run(connect_and_close(MqttDriver(device, schema="alpha")))

    assert peer[:2] == (CHECKED_ADDRESS, mqtt_peer.port)
    assert rebinding_resolver.lookups == 1


@pytest.fixture
def opcua_peer():
    server = OpcUaTestServer()
    server.port = free_port_in(PORTS)
    server.start()
    yield server
    server.stop()


def test_opcua_connects_checked_address(rebinding_resolver, opcua_peer):
    device = Device(id=42, name="Rebinding server", protocol="opcua", host=HOST_NAME, port=opcua_peer.port,
                    endpoint_path=opcua_peer.endpoint_path, timeout=3.0)
    driver = OpcUaDriver(device, schema="alpha")

    async def connect_and_read():
        await driver.connect()
        try:
            node = driver.client.get_node(opcua_peer.node_id("Boiler1.SupplyTemp"))
            return await node.read_value()
        finally:
            await driver.close()

    assert asyncio.run(connect_and_read()) == 70.0
    assert rebinding_resolver.lookups == 1



def start_tls_broker(directory, pki):
    broker = PrivateBroker(directory)
    broker.port = free_port_in(PORTS)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {pki.files['ca.pem']}\ncertfile {pki.files['server.pem']}\nkeyfile {pki.files['server.key']}\n"
        "require_certificate true\n"
    )
    broker.start()
    return broker


def tls_device(port, pki):
    device = Device.objects.create(name=f"Rebinding TLS broker {port}", protocol="mqtt", host=HOST_NAME, port=port,
                                   timeout=2.0, qos=1, client_id="tc-rebinding-tls", tls_verify_hostname=True)
    device.client_certificate = import_certificate(
        f"MQTT client {device.pk}", pki.client_pem, pki.client_key_pem, actor=ACTOR
    )
    device.save()
    device.trusted_certificates.add(import_certificate(f"MQTT trust {device.pk}", pki.ca_pem, actor=ACTOR))
    return Device.objects.with_certificates().get(pk=device.pk)


async def connect_and_close(driver):
    await driver.connect()
    peer = driver.client.socket().getpeername()
    await driver.close()
    return peer


def test_mqtt_tls_checks_host_name(alpha, rebinding_resolver, tls_directory):
    # The broker certificate names only the host name, so the TLS check passes only against the name.
    pki = make_pki(tls_directory, server_names=(HOST_NAME,))
    broker = start_tls_broker(tls_directory, pki)
    try:
        peer = asyncio.run(connect_and_close(MqttDriver(tls_device(broker.port, pki), schema="alpha")))
    finally:
        broker.stop()

    assert peer[:2] == (CHECKED_ADDRESS, broker.port)
    assert rebinding_resolver.lookups == 1


def test_mqtt_tls_rejects_address_certificate(alpha, rebinding_resolver, tls_directory):
    # A certificate for the address alone does not match the host name that the device names.
    pki = make_pki(tls_directory, server_names=(CHECKED_ADDRESS,))
    broker = start_tls_broker(tls_directory, pki)
    try:
        with pytest.raises(DeviceUnreachable, match="certificate verify failed.*Hostname mismatch"):
            asyncio.run(connect_and_close(MqttDriver(tls_device(broker.port, pki), schema="alpha")))
    finally:
        broker.stop()
