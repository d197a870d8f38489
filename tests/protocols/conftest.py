"""Protocol peers on loopback that tests control: Modbus server, Mosquitto, OPC UA server, DNP3 outstation."""

import asyncio
import ipaddress
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import opendnp3
import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.conftest import ServerThread, free_port

UNIT_ID = 1
REGISTER_COUNT = 200
# Function codes that pymodbus uses to select the datastore block.
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


@dataclass
class RegisterServer:
    """Handle of a running register server: its port, its datastore, and the requests and responses it saw."""

    port: int
    thread: ServerThread
    server: ModbusTcpServer = None
    requests: list = field(default_factory=list)
    responses: list = field(default_factory=list)
    # Seconds the response to each function code waits after the request was executed, e.g. {6: 2.0}.
    response_delays: dict = field(default_factory=dict)

    def set(self, register_type, address, values):
        self._call(self.server.async_setValues(UNIT_ID, FUNCTION_CODES[register_type], address, list(values)))

    def get(self, register_type, address, count=1):
        return list(self._call(self.server.async_getValues(UNIT_ID, FUNCTION_CODES[register_type], address, count)))

    def read_requests(self):
        """Return (function code, address, count) of each read request received so far."""
        return [request for request in self.requests if request[0] in (1, 2, 3, 4)]

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.thread.loop).result(timeout=5)


@pytest.fixture
def register_server():
    """A Modbus server on a free loopback port with unit 1: 200 registers and 16 bits in each table.

    Reads beyond the mapped addresses get exception 2 (illegal data address).
    """
    port = free_port()
    handle = RegisterServer(port=port, thread=None)

    def record(sending, pdu):
        if sending:
            handle.responses.append((pdu.function_code, getattr(pdu, "exception_code", None)))
            # Blocks the server's loop after the request took effect, as a device that responds late does.
            time.sleep(handle.response_delays.get(pdu.function_code & 0x7F, 0.0))
        else:
            handle.requests.append((pdu.function_code, getattr(pdu, "address", None), getattr(pdu, "count", None)))
        return pdu

    async def serve(ready):
        device = SimDevice(
            UNIT_ID,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[0] * REGISTER_COUNT, datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * REGISTER_COUNT, datatype=DataType.REGISTERS)],
            ),
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", port), trace_pdu=record)
        await server.serve_forever(background=True)
        handle.server = server
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await server.shutdown()

    handle.thread = ServerThread(serve)
    handle.thread.start()
    yield handle
    handle.thread.stop()


MQTT_BROKER = ("127.0.0.1", 1883)


class PrivateBroker:
    """A Mosquitto process of the test's own, which tests may stop and start again on the same port."""

    def __init__(self, directory):
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"Mosquitto did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def make_certificates(directory):
    """Write a CA, a server certificate for 127.0.0.1 and a client certificate as PEM files; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def issue(subject_name, issuer_name, public_key, signing_key, *, ca=False, ip=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                            critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    def write(name, certificate, key):
        (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("ThermaCore test CA", "ThermaCore test CA", ca_key.public_key(), ca_key, ca=True)
    write("ca", ca, ca_key)
    for name, ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, issue(f"ThermaCore test {name}", "ThermaCore test CA", key.public_key(), ca_key, ip=ip), key)
    return {name: directory / f"{name}.pem" for name in ("ca", "server", "client")} | {
        "client_key": directory / "client.key", "server_key": directory / "server.key"}


@pytest.fixture
def tls_broker(settings):
    """A Mosquitto of the test's own that accepts only TLS clients with a certificate of the test CA.

    Its directory is the allowed TLS files directory, so devices may name the files in it.
    """
    # Mosquitto started as root reads its certificates as user mosquitto, which cannot enter
    # pytest's private tmp_path, so these throwaway files live in a readable directory.
    directory = Path(tempfile.mkdtemp(prefix="thermacore-tls-"))
    directory.chmod(0o755)
    settings.THERMACORE_TLS_FILES_DIR = str(directory)
    files = make_certificates(directory)
    for path in directory.iterdir():
        path.chmod(0o644)
    broker = PrivateBroker(directory)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {files['ca']}\ncertfile {files['server']}\nkeyfile {files['server_key']}\n"
        "require_certificate true\n"
    )
    broker.start()
    yield broker, files
    broker.stop()
    shutil.rmtree(directory)


@pytest.fixture
def private_broker(tmp_path):
    broker = PrivateBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def topic_prefix(request):
    """A topic prefix no other test or test run uses, so messages never cross between tests."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40]
    return f"thermacore-test/{uuid.uuid4().hex[:12]}/{name}"


OPCUA_NAMESPACE = "urn:thermacore:test"
# Variables of the test server: name → (initial value, variant type).
OPCUA_VARIABLES = {
    "Boiler1.SupplyTemp": (70.0, ua.VariantType.Double),
    "Boiler1.ReturnTemp": (50.0, ua.VariantType.Double),
    "Boiler1.Setpoint": (60.0, ua.VariantType.Double),
    "Boiler1.Level": (0.5, ua.VariantType.Float),
    "Boiler1.Starts": (3, ua.VariantType.Int16),
    "Boiler1.Running": (True, ua.VariantType.Boolean),
    "Boiler1.Model": ("B-100", ua.VariantType.String),
}


OPCUA_SERVER_URI = "urn:thermacore:test:server"
SECURE_POLICY_TYPES = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


def make_opcua_server_certificate(name="ThermaCore test server"):
    """Return (certificate PEM, certificate DER, private key DER) of a self-signed OPC UA server certificate."""
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = cert_gen.generate_private_key()
    certificate = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(OPCUA_SERVER_URI), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        certificate.public_bytes(serialization.Encoding.DER),
        key_der,
    )


class _PasswordUserManager:
    """Accepts only the user names and passwords it was given."""

    def __init__(self, users):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcUaTestServer:
    """An asyncua server in a thread of its own, which tests may stop and start again on the same port."""

    def __init__(self, users=None, certificate=None):
        self.port = free_port()
        self.users = users
        # (certificate DER, private key DER) to offer Sign and SignAndEncrypt with every current policy.
        self.certificate = certificate
        self.endpoint_path = "/thermacore/"
        self.thread = None
        self.server = None
        self.namespace_index = None

    def node_id(self, name):
        return f"ns={self.namespace_index};s={name}"

    def start(self):
        async def serve(ready):
            server = Server(user_manager=_PasswordUserManager(self.users) if self.users else None)
            await server.init()
            if self.users:
                server.set_identity_tokens([ua.UserNameIdentityToken])
            server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}{self.endpoint_path}")
            if self.certificate:
                await server.set_application_uri(OPCUA_SERVER_URI)
                server.set_security_policy(SECURE_POLICY_TYPES)
                await server.load_certificate(self.certificate[0])
                await server.load_private_key(self.certificate[1])
            self.namespace_index = await server.register_namespace(OPCUA_NAMESPACE)
            plant = await server.nodes.objects.add_object(self.namespace_index, "Plant")
            for name, (value, variant_type) in OPCUA_VARIABLES.items():
                node = await plant.add_variable(
                    ua.NodeId(name, self.namespace_index), name, value, varianttype=variant_type
                )
                await node.set_writable()
            async with server:
                self.server = server
                ready.set()
                await asyncio.Event().wait()

        self.thread = ServerThread(serve).start()
        return self

    def stop(self):
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
            self.server = None

    def write(self, name, value, status=ua.StatusCodes.Good, source_time=None):
        """Set a variable as a device would, with a status code and a source timestamp."""
        variant_type = OPCUA_VARIABLES[name][1]
        data_value = ua.DataValue(
            ua.Variant(value, variant_type), StatusCode=ua.StatusCode(status), SourceTimestamp=source_time
        )
        self._call(self.server.write_attribute_value(ua.NodeId(name, self.namespace_index), data_value))

    def read(self, name):
        return self._call(self.server.get_node(ua.NodeId(name, self.namespace_index)).read_value())

    def monitored_item_count(self):
        async def count():
            subscriptions = self.server.iserver.subscription_service.subscriptions.values()
            return sum(len(subscription.monitored_item_srv._monitored_items) for subscription in subscriptions)

        return self._call(count())

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.thread.loop).result(timeout=10)


    def reset(self):
        for name, (value, _variant_type) in OPCUA_VARIABLES.items():
            self.write(name, value)


@pytest.fixture(scope="module")
def _shared_opcua_server():
    # The server takes seconds to build its standard address space, so tests share one per module.
    server = OpcUaTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def opcua_server(_shared_opcua_server):
    """The module's OPC UA server with every variable back at its initial value and Good status."""
    _shared_opcua_server.reset()
    return _shared_opcua_server


@pytest.fixture(scope="module")
def secure_opcua_server():
    """An OPC UA server that offers only Sign and SignAndEncrypt, with Basic256Sha256 and both Aes policies.

    Its ``certificate_pem`` is the certificate it presents.
    """
    pem, der, key_der = make_opcua_server_certificate()
    server = OpcUaTestServer(certificate=(der, key_der)).start()
    server.certificate_pem = pem
    yield server
    server.stop()


@pytest.fixture
def password_opcua_server():
    """An OPC UA server that admits only user 'operator' with password 'Secret-4711'."""
    server = OpcUaTestServer(users={"operator": "Secret-4711"}).start()
    yield server
    server.stop()


@pytest.fixture
def restartable_opcua_server():
    """An OPC UA server of the test's own, which it may stop and start again."""
    server = OpcUaTestServer().start()
    yield server
    server.stop()


class _OutstationApplication(opendnp3.IOutstationApplication):
    """Asks for time (IIN1.4) until the master writes it, as a device with a lost clock does."""

    def __init__(self):
        super().__init__()
        self.need_time = False
        self.time_written = []

    def SupportsWriteAbsoluteTime(self):
        return True

    def WriteAbsoluteTime(self, timestamp):
        self.time_written.append(timestamp.msSinceEpoch)
        self.need_time = False
        return True

    def GetApplicationIIN(self):
        iin = opendnp3.ApplicationIIN()
        iin.needTime = self.need_time
        return iin


class _CommandHandler(opendnp3.ICommandHandler):
    def Begin(self):
        pass

    def End(self):
        pass


class Dnp3Outstation:
    """A yadnp3 outstation on a free loopback port with 5 points of each type, event buffers and unsolicited on."""

    MASTER_ADDRESS = 1
    OUTSTATION_ADDRESS = 10

    def __init__(self):
        self.port = free_port()
        self.manager = opendnp3.DNP3Manager(1)
        self.application = _OutstationApplication()
        self.handler = _CommandHandler()
        self.listener = opendnp3.IChannelListener()
        self.channel = self.manager.AddTCPServer(
            "test-outstation", opendnp3.LogLevels(0), opendnp3.ServerAcceptMode.CloseExisting,
            opendnp3.IPEndpoint("127.0.0.1", self.port), self.listener,
        )
        config = opendnp3.OutstationStackConfig(opendnp3.DatabaseConfig(5))
        # Without event buffers an outstation reports no events at all.
        config.outstation.eventBufferConfig = opendnp3.EventBufferConfig.AllTypes(100)
        config.outstation.params.allowUnsolicited = True
        config.link.LocalAddr = self.OUTSTATION_ADDRESS
        config.link.RemoteAddr = self.MASTER_ADDRESS
        self.outstation = self.channel.AddOutstation("test-outstation", self.handler, self.application, config)
        self.outstation.Enable()

    def update(self, *measurements):
        """Apply (measurement, index) pairs, e.g. (opendnp3.Analog(12.75, opendnp3.Flags(1)), 0)."""
        builder = opendnp3.UpdateBuilder()
        for measurement, index in measurements:
            builder.Update(measurement, index)
        self.outstation.Apply(builder.Build())

    def restart(self, *, need_time=False):
        """Report a restart (IIN1.7) and, when asked, a need for time (IIN1.4) from now on."""
        self.application.need_time = need_time
        self.outstation.SetRestartIIN()

    def stop(self):
        self.manager.Shutdown()


@pytest.fixture
def dnp3_outstation():
    outstation = Dnp3Outstation()
    yield outstation
    outstation.stop()


@pytest.fixture
def tls_directory():
    """A folder for certificates and keys that a Mosquitto started by the tests can read."""
    # Mosquitto started as root reads its files as user mosquitto, which cannot enter pytest's tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="thermacore-tls-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
