"""Setpoint writes whose response is late or missing: "unconfirmed" once the request was sent, "not written" before.

Real peers on loopback: a yadnp3 outstation that executes commands slowly, a pymodbus server whose
response waits after the write took effect, and an asyncua server whose write service waits after
the value was written.
"""

import asyncio
import time

import pytest
from asyncua.common.callback import CallbackType
from django.contrib.auth import get_user_model

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.modbus.pool import stop_poll_loop
from apps.protocols.services import InvalidSetpoint, SetpointError, write_setpoint
from apps.protocols.sessions import make_driver, run_session
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.test_dnp3_setpoints import CommandOutstation, output_point, port_in_range
from tests.protocols.test_modbus_pool import poll_now

# Seconds a slow peer takes, well beyond the devices' timeouts below.
SLOW_SECONDS = 3.0


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user("operator", password="Operator-password-4711", role=Role.OPERATOR)


@pytest.fixture
def outstation():
    server = CommandOutstation()
    server.set_outputs(analog=[(index, 0.0) for index in range(5)])
    yield server
    server.stop()


def setpoint_entry(point):
    return AuditEntry.objects.get(action=AuditAction.SETPOINT_WRITTEN, object_id=str(point.pk))


def eventually(check, seconds=10.0):
    """Return the first true result of ``check()`` within ``seconds``, or the last one."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def read_value(point):
    """Read ``point`` on a session of its own and return its value, None when unreadable."""
    try:
        [sample] = run_session(make_driver(point.device), lambda driver: driver.read([point]))
    except DeviceUnreachable:
        return None
    return sample.value


def assert_unconfirmed(raised, point, value):
    message = str(raised.value)
    assert not isinstance(raised.value, InvalidSetpoint)
    assert f"Setpoint {value} for point {point.pk} is unconfirmed" in message
    assert "may have" in message
    entry = setpoint_entry(point)
    assert entry.outcome == Outcome.FAILURE
    assert entry.detail["error"] == message
    assert entry.detail["requested"] == value


# DNP3


@pytest.mark.parametrize("operate_mode", ["direct_operate", "select_before_operate"])
def test_dnp3_slow_operate_is_unconfirmed(alpha, outstation, operator, operate_mode):
    point = output_point(outstation, "analog_output_status", 3, data_type="float32",
                         dnp3_operate_mode=operate_mode)
    point.device.timeout = 1.0
    point.device.save()
    outstation.handler.operate_delay = SLOW_SECONDS

    started = time.monotonic()
    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 42.0, actor=operator)
    waited = time.monotonic() - started

    assert_unconfirmed(raised, point, 42.0)
    assert "FAILURE_RESPONSE_TIMEOUT" in str(raised.value)
    # The write failed on opendnp3's response timeout, before the outstation finished.
    assert waited < SLOW_SECONDS
    assert eventually(lambda: outstation.handler.operates)
    assert outstation.handler.operates[0][:2] == (("AnalogOutputFloat32", 42.0), 3)
    outstation.handler.operate_delay = 0.0
    assert eventually(lambda: read_value(point) == 42.0)


def test_dnp3_slow_select_is_not_written(alpha, outstation, operator):
    point = output_point(outstation, "analog_output_status", 2, data_type="float32",
                         dnp3_operate_mode="select_before_operate")
    point.device.timeout = 1.0
    point.device.save()
    outstation.handler.select_delay = SLOW_SECONDS

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 17.0, actor=operator)

    message = str(raised.value)
    assert f"Setpoint 17.0 for point {point.pk} was not written" in message
    assert "failed before the outstation operated it: FAILURE_RESPONSE_TIMEOUT" in message
    assert setpoint_entry(point).outcome == Outcome.FAILURE
    # The late select response reaches no waiting master, so no operate follows it.
    assert eventually(lambda: outstation.handler.selects)
    time.sleep(0.5)
    assert outstation.handler.operates == []
    outstation.handler.select_delay = 0.0
    assert eventually(lambda: read_value(point) == 0.0)


def test_dnp3_refused_connection_is_not_written(alpha, operator):
    device = DeviceFactory(protocol="dnp3", port=port_in_range(), timeout=0.5)
    point = PointFactory(device=device, address=None, dnp3_type="analog_output_status", dnp3_index=0,
                         data_type="float32", sensor=SensorFactory(minimum=0, maximum=100))

    with pytest.raises(SetpointError, match=f"Setpoint 5.0 for point {point.pk} was not written: Cannot connect"):
        write_setpoint(point, 5, actor=operator)

    assert setpoint_entry(point).outcome == Outcome.FAILURE


# Modbus TCP


def modbus_point(register_server, **fields):
    device = DeviceFactory(port=register_server.port, unit_id=1, timeout=0.5)
    fields.setdefault("sensor", SensorFactory(minimum=0, maximum=1000))
    return PointFactory(device=device, register_type="holding", address=100, **fields)


@pytest.mark.parametrize(("data_type", "function_code"), [("uint16", 6), ("float32", 16)])
def test_modbus_late_write_response_is_unconfirmed(alpha, register_server, operator, data_type, function_code):
    point = modbus_point(register_server, data_type=data_type)
    register_server.response_delays[function_code] = SLOW_SECONDS / 2

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 321, actor=operator)

    assert_unconfirmed(raised, point, 321.0)
    assert "was sent, but no response confirmed it" in str(raised.value)
    # The server executed the write before its response waited.
    register_server.response_delays.clear()
    assert eventually(lambda: read_value(point) == 321.0)


@pytest.fixture
def poll_loop_during_test():
    """Let the test start the worker's poll loop, whose pooled connections setpoint writes then lease."""
    stop_poll_loop("test start")
    yield
    stop_poll_loop("test end")


def test_modbus_pooled_unconfirmed_write_not_repeated(alpha, register_server, operator, poll_loop_during_test):
    point = modbus_point(register_server, data_type="uint16")
    assert poll_now(point.device).failed == 0
    register_server.response_delays[6] = SLOW_SECONDS / 2

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 321, actor=operator)

    # The reused connection failed on the write, which is not sent again on a new connection.
    assert_unconfirmed(raised, point, 321.0)
    assert [request for request in register_server.requests if request[0] == 6] == [(6, 100, 0)]
    register_server.response_delays.clear()
    assert eventually(lambda: register_server.get("holding", 100) == [321])


def test_modbus_late_read_before_write_is_not_written(alpha, register_server, operator):
    # write_setpoint reads the point before it writes. When that read times out, no write was sent.
    point = modbus_point(register_server, data_type="bit", bit=3, sensor=SensorFactory(minimum=0, maximum=1))
    register_server.response_delays[3] = SLOW_SECONDS / 2

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 1, actor=operator)

    assert f"Setpoint 1.0 for point {point.pk} was not written" in str(raised.value)
    assert [request for request in register_server.requests if request[0] == 6] == []
    assert setpoint_entry(point).outcome == Outcome.FAILURE


def test_modbus_refused_connection_is_not_written(alpha, operator):
    device = DeviceFactory(port=free_port(), timeout=0.5)
    point = PointFactory(device=device, address=100, sensor=SensorFactory(minimum=0, maximum=90))

    with pytest.raises(SetpointError, match=f"Setpoint 10.0 for point {point.pk} was not written: Cannot connect"):
        write_setpoint(point, 10, actor=operator)

    assert setpoint_entry(point).outcome == Outcome.FAILURE


def test_modbus_exception_response_is_not_written(alpha, register_server, operator):
    # The server maps 200 holding registers, so a write to 250 gets exception 2.
    point = modbus_point(register_server, data_type="uint16")
    point.address = 250
    point.save()

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 5, actor=operator)

    message = str(raised.value)
    assert f"Setpoint 5.0 for point {point.pk} was not written" in message
    assert "exception 2 (illegal data address)" in message


# OPC UA


@pytest.fixture
def slow_opcua_writes(opcua_server):
    """Make the module's OPC UA server wait SLOW_SECONDS after each write took effect, before it responds."""

    async def wait_after_write(event, name):
        await asyncio.sleep(SLOW_SECONDS)

    async def subscribe():
        opcua_server.server.subscribe_server_callback(CallbackType.PostWrite, wait_after_write)

    async def unsubscribe():
        opcua_server.server.unsubscribe_server_callback(CallbackType.PostWrite, wait_after_write)

    opcua_server._call(subscribe())
    yield opcua_server
    opcua_server._call(unsubscribe())


def test_opcua_late_write_response_is_unconfirmed(alpha, slow_opcua_writes, operator):
    server = slow_opcua_writes
    device = DeviceFactory(protocol="opcua", port=server.port, endpoint_path=server.endpoint_path, timeout=1.0)
    point = PointFactory(device=device, node_id=server.node_id("Boiler1.Setpoint"), address=None,
                         sensor=SensorFactory(minimum=0, maximum=100))

    with pytest.raises(SetpointError) as raised:
        write_setpoint(point, 66.5, actor=operator)

    assert_unconfirmed(raised, point, 66.5)
    assert eventually(lambda: server.read("Boiler1.Setpoint") == 66.5)
