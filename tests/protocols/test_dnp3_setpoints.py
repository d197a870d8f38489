"""DNP3 setpoints (CROB and analog output blocks) through write_setpoint, against yadnp3 outstations on loopback."""

import shutil
import tempfile
import threading
import time
from pathlib import Path

import opendnp3
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.audit.services import Actor
from apps.protocols.certificates import import_certificate
from apps.protocols.dnp3.commands import build_command
from apps.protocols.models import Point
from apps.protocols.services import InvalidSetpoint, SetpointError, write_setpoint
from tests.conftest import free_port_in
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.pki import make_pki

# Ports of this module's servers; other suites running beside it use other ranges.
PORTS = range(21500, 21550)
MASTER_ADDRESS = 1
OUTSTATION_ADDRESS = 10
ACTOR = Actor.system_job("tests.dnp3_setpoints")


def port_in_range():
    return free_port_in(PORTS)


class _Handler(opendnp3.ICommandHandler):
    """Executes commands on the outstation's outputs, or rejects them with a chosen command status."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.selects = []
        self.operates = []
        # Index to the command status returned for every command on it.
        self.reject = {}
        # Indexes whose commands succeed without changing the output status.
        self.ignore = set()
        # Seconds each select and each operate block the outstation's thread, as a slow outstation does.
        self.select_delay = 0.0
        self.operate_delay = 0.0

    def Begin(self):
        pass

    def End(self):
        pass

    def Select(self, command, index):
        time.sleep(self.select_delay)
        with self.lock:
            self.selects.append((_describe(command), index))
        return self.reject.get(index, opendnp3.CommandStatus.SUCCESS)

    def Operate(self, command, index, updates, operate_type):
        time.sleep(self.operate_delay)
        with self.lock:
            self.operates.append((_describe(command), index, operate_type.name))
        status = self.reject.get(index, opendnp3.CommandStatus.SUCCESS)
        if status != opendnp3.CommandStatus.SUCCESS or index in self.ignore:
            return status
        if isinstance(command, opendnp3.ControlRelayOutputBlock):
            state = None
            if command.opType == opendnp3.OperationType.LATCH_ON or command.tcc == opendnp3.TripCloseCode.CLOSE:
                state = True
            elif command.opType == opendnp3.OperationType.LATCH_OFF or command.tcc == opendnp3.TripCloseCode.TRIP:
                state = False
            if state is not None:
                measurement = opendnp3.BinaryOutputStatus(state)
                measurement.flags = opendnp3.Flags(0x81 if state else 0x01)
                updates.Update(measurement, index)
        else:
            measurement = opendnp3.AnalogOutputStatus(float(command.value))
            measurement.flags = opendnp3.Flags(0x01)
            updates.Update(measurement, index)
        return status


def _describe(command):
    if isinstance(command, opendnp3.ControlRelayOutputBlock):
        return ("crob", command.opType.name, command.tcc.name, command.onTimeMS, command.offTimeMS)
    return (type(command).__name__, command.value)


class CommandOutstation:
    """A yadnp3 outstation with 5 points of each type whose outputs follow the commands they get."""

    def __init__(self, tls_files=None, port=None):
        self.port = port or port_in_range()
        self.manager = opendnp3.DNP3Manager(1)
        self.handler = _Handler()
        self.application = opendnp3.IOutstationApplication()
        self.listener = opendnp3.IChannelListener()
        endpoint = opendnp3.IPEndpoint("127.0.0.1", self.port)
        mode = opendnp3.ServerAcceptMode.CloseExisting
        if tls_files:
            config = opendnp3.TLSConfig(
                str(tls_files["ca.pem"]), str(tls_files["server.pem"]), str(tls_files["server.key"])
            )
            self.channel = self.manager.AddTLSServer(
                "setpoint-outstation", opendnp3.LogLevels(0), mode, endpoint, config, self.listener
            )
        else:
            self.channel = self.manager.AddTCPServer(
                "setpoint-outstation", opendnp3.LogLevels(0), mode, endpoint, self.listener
            )
        config = opendnp3.OutstationStackConfig(opendnp3.DatabaseConfig(5))
        config.outstation.eventBufferConfig = opendnp3.EventBufferConfig.AllTypes(100)
        config.link.LocalAddr = OUTSTATION_ADDRESS
        config.link.RemoteAddr = MASTER_ADDRESS
        self.outstation = self.channel.AddOutstation(
            "setpoint-outstation", self.handler, self.application, config
        )
        self.outstation.Enable()

    def set_outputs(self, binary=(), analog=()):
        """Set (index, state) binary output status and (index, value) analog output status points online."""
        builder = opendnp3.UpdateBuilder()
        for index, state in binary:
            measurement = opendnp3.BinaryOutputStatus(state)
            measurement.flags = opendnp3.Flags(0x81 if state else 0x01)
            builder.Update(measurement, index)
        for index, value in analog:
            measurement = opendnp3.AnalogOutputStatus(value)
            measurement.flags = opendnp3.Flags(0x01)
            builder.Update(measurement, index)
        self.outstation.Apply(builder.Build())

    def stop(self):
        self.manager.Shutdown()


@pytest.fixture
def outstation():
    server = CommandOutstation()
    server.set_outputs(binary=[(index, False) for index in range(5)], analog=[(index, 0.0) for index in range(5)])
    yield server
    server.stop()


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user("operator", password="Operator-password-4711", role=Role.OPERATOR)


def output_point(outstation, dnp3_type, index, *, device=None, sensor=None, **fields):
    device = device or DeviceFactory(
        protocol="dnp3", port=outstation.port, timeout=2.0,
        dnp3_master_address=MASTER_ADDRESS, dnp3_outstation_address=OUTSTATION_ADDRESS,
    )
    sensor = sensor or SensorFactory(minimum=-1000, maximum=100000)
    return PointFactory(
        device=device, sensor=sensor, register_type="holding", address=None, dnp3_type=dnp3_type,
        dnp3_index=index, **fields,
    )


def last_audit_entry():
    return AuditEntry.objects.filter(action=AuditAction.SETPOINT_WRITTEN).latest("pk")


def test_latch_select_before_operate(alpha, outstation, operator):
    point = output_point(outstation, "binary_output_status", 2, data_type="bool",
                         sensor=SensorFactory(minimum=0, maximum=1))

    result = write_setpoint(point, 1, actor=operator)

    assert result.read_back == 1.0
    assert outstation.handler.selects == [(("crob", "LATCH_ON", "NUL", 0, 0), 2)]
    assert outstation.handler.operates == [(("crob", "LATCH_ON", "NUL", 0, 0), 2, "SelectBeforeOperate")]
    entry = last_audit_entry()
    assert entry.outcome == Outcome.SUCCESS
    assert entry.detail["device_response"] == "SUCCESS (0)"
    assert entry.detail["read_back"] == 1.0

    result = write_setpoint(point, 0, actor=operator)

    assert result.read_back == 0.0
    assert outstation.handler.operates[-1][0][1] == "LATCH_OFF"


def test_analog_float32_direct_operate_scaled(alpha, outstation, operator):
    point = output_point(outstation, "analog_output_status", 3, data_type="float32", scale=0.1,
                         dnp3_operate_mode="direct_operate")

    result = write_setpoint(point, 12.5, actor=operator)

    assert outstation.handler.selects == []
    assert outstation.handler.operates == [(("AnalogOutputFloat32", 125.0), 3, "DirectOperate")]
    assert result.written == pytest.approx(12.5)
    assert result.read_back == pytest.approx(12.5)
    assert last_audit_entry().detail["device_response"] == "SUCCESS (0)"


def test_analog_int16_and_int32_blocks(alpha, outstation, operator):
    small = output_point(outstation, "analog_output_status", 1, data_type="int16")
    large = output_point(outstation, "analog_output_status", 4, data_type="int32", device=small.device)

    small_result = write_setpoint(small, 12.4, actor=operator)
    large_result = write_setpoint(large, 70000, actor=operator)

    assert outstation.handler.operates[0][0] == ("AnalogOutputInt16", 12)
    assert outstation.handler.operates[1][0] == ("AnalogOutputInt32", 70000)
    assert (small_result.written, small_result.read_back) == (12.0, 12.0)
    assert (large_result.written, large_result.read_back) == (70000.0, 70000.0)


def test_int16_overflow_rejected_before_sending(alpha, outstation, operator):
    point = output_point(outstation, "analog_output_status", 1, data_type="int16")

    with pytest.raises(InvalidSetpoint, match="raw value 40000 does not fit an int16"):
        write_setpoint(point, 40000, actor=operator)

    assert outstation.handler.operates == []


def test_pulse_with_on_and_off_time(alpha, outstation, operator):
    point = output_point(outstation, "binary_output_status", 0, data_type="bool", dnp3_control="pulse",
                         dnp3_on_time_ms=250, dnp3_off_time_ms=100, sensor=SensorFactory(minimum=0, maximum=1))

    result = write_setpoint(point, 1, actor=operator)

    assert outstation.handler.operates == [(("crob", "PULSE_ON", "NUL", 250, 100), 0, "SelectBeforeOperate")]
    # A pulse ends off, so the read-back checks only that the status is readable.
    assert result.read_back == 0.0
    with pytest.raises(InvalidSetpoint, match="a pulse control takes 1"):
        write_setpoint(point, 0, actor=operator)


def test_trip_close_codes(alpha, outstation, operator):
    outstation.set_outputs(binary=[(1, True)])
    point = output_point(outstation, "binary_output_status", 1, data_type="bool", dnp3_control="trip_close",
                         dnp3_on_time_ms=500, sensor=SensorFactory(minimum=0, maximum=1))

    result = write_setpoint(point, 0, actor=operator)

    assert outstation.handler.operates == [(("crob", "PULSE_ON", "TRIP", 500, 0), 1, "SelectBeforeOperate")]
    assert result.read_back == 0.0


def test_rejected_command_audited(alpha, outstation, operator):
    outstation.handler.reject[4] = opendnp3.CommandStatus.NOT_AUTHORIZED
    point = output_point(outstation, "analog_output_status", 4, data_type="float32",
                         dnp3_operate_mode="direct_operate")

    with pytest.raises(SetpointError, match=r"rejected analog output float32 .* NOT_AUTHORIZED \(9\)"):
        write_setpoint(point, 5, actor=operator)

    entry = last_audit_entry()
    assert entry.outcome == Outcome.FAILURE
    assert entry.detail["device_response"] == "NOT_AUTHORIZED (9)"
    assert "NOT_AUTHORIZED" in entry.detail["error"]


def test_rejected_select_never_operates(alpha, outstation, operator):
    outstation.handler.reject[3] = opendnp3.CommandStatus.LOCAL
    point = output_point(outstation, "binary_output_status", 3, data_type="bool",
                         sensor=SensorFactory(minimum=0, maximum=1))

    with pytest.raises(SetpointError, match=r"LOCAL \(7\)"):
        write_setpoint(point, 1, actor=operator)

    assert len(outstation.handler.selects) == 1
    assert outstation.handler.operates == []


def test_read_back_mismatch_fails(alpha, outstation, operator):
    outstation.handler.ignore.add(2)
    point = output_point(outstation, "analog_output_status", 2, data_type="float32")

    with pytest.raises(SetpointError, match="reads back 0.0"):
        write_setpoint(point, 7.5, actor=operator)

    entry = last_audit_entry()
    assert entry.outcome == Outcome.FAILURE
    assert entry.detail["device_response"] == "SUCCESS (0)"


@pytest.mark.parametrize(
    ("dnp3_type", "value", "message"),
    [
        ("analog_input", 1, "an input; setpoints go to binary_output_status"),
        ("binary_output_status", 0.5, "a DNP3 binary output takes 0 or 1"),
    ],
)
def test_invalid_dnp3_setpoints(alpha, outstation, operator, dnp3_type, value, message):
    point = output_point(outstation, dnp3_type, 0, data_type="bool", sensor=SensorFactory(minimum=0, maximum=1))

    with pytest.raises(InvalidSetpoint, match=message):
        write_setpoint(point, value, actor=operator)

    assert outstation.handler.operates == []


def test_unreachable_outstation_audited(alpha, operator):
    device = DeviceFactory(protocol="dnp3", port=port_in_range(), timeout=0.5)
    point = PointFactory(device=device, address=None, dnp3_type="analog_output_status", dnp3_index=0,
                         sensor=SensorFactory(minimum=0, maximum=100))

    with pytest.raises(SetpointError, match="Cannot connect to DNP3 outstation"):
        write_setpoint(point, 5, actor=operator)

    assert last_audit_entry().outcome == Outcome.FAILURE


def test_analog_output_needs_block_data_type(alpha):
    device = DeviceFactory(protocol="dnp3")
    point = Point(device=device, sensor=SensorFactory(), register_type="holding", address=None,
                  dnp3_type="analog_output_status", dnp3_index=0, data_type="uint16")

    with pytest.raises(ValidationError) as raised:
        point.full_clean()

    assert "take data_type 'int32'" in str(raised.value.message_dict["data_type"])


# DNP3 over TLS


@pytest.fixture
def pki():
    directory = Path(tempfile.mkdtemp(prefix="thermacore-dnp3-test-"))
    yield make_pki(directory)
    shutil.rmtree(directory)


def store_certificates(pki, *, trusted_ca):
    client = import_certificate("DNP3 client", pki.client_pem, pki.client_key_pem, actor=ACTOR)
    trusted = import_certificate("DNP3 trust", trusted_ca, actor=ACTOR)
    return client, trusted


def test_setpoint_over_tls(alpha, pki, operator):
    server = CommandOutstation(tls_files=pki.files)
    try:
        client, trusted = store_certificates(pki, trusted_ca=pki.ca_pem)
        point = output_point(server, "analog_output_status", 0, data_type="float32")
        point.device.client_certificate = client
        point.device.save()
        point.device.trusted_certificates.add(trusted)

        result = write_setpoint(point, 42.5, actor=operator)
    finally:
        server.stop()

    assert result.read_back == 42.5
    assert server.handler.operates == [(("AnalogOutputFloat32", 42.5), 0, "SelectBeforeOperate")]
    # The decrypted key lives only in a private directory that close() removes.
    assert not list(Path(tempfile.gettempdir()).glob("thermacore-dnp3-*/client.key"))


def test_tls_untrusted_outstation_fails(alpha, pki, operator, tmp_path):
    other = make_pki(tmp_path, ca_name="Other CA")
    server = CommandOutstation(tls_files=pki.files)
    try:
        client, trusted = store_certificates(pki, trusted_ca=other.ca_pem)
        point = output_point(server, "analog_output_status", 0, data_type="float32")
        point.device.client_certificate = client
        point.device.save()
        point.device.trusted_certificates.add(trusted)

        with pytest.raises(SetpointError, match="Cannot connect to DNP3 outstation"):
            write_setpoint(point, 42.5, actor=operator)
    finally:
        server.stop()

    assert server.handler.operates == []
    assert not list(Path(tempfile.gettempdir()).glob("thermacore-dnp3-*/client.key"))


@pytest.mark.parametrize(
    ("fields", "value", "message"),
    [
        ({"data_type": "float32", "scale": 1e-35}, 100000, "does not fit a float32"),
        ({"data_type": "int32"}, 2**31, "raw value 2147483648 does not fit an int32"),
        ({"data_type": "uint16"}, 1, "has no analog output block"),
    ],
)
def test_analog_block_encoding_errors(fields, value, message):
    point = Point(id=1, sensor_id=1, dnp3_type="analog_output_status", dnp3_index=0, address=None, **fields)

    with pytest.raises(ValueError, match=message):
        build_command(point, value)
