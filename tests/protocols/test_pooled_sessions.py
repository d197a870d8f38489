"""Setpoint writes and connection tests over the worker's pooled Modbus connection, or a connection of their own."""

import logging

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.choices import Role
from apps.protocols.diagnostics import check_connection
from apps.protocols.modbus.pool import poll_loop, running_poll_loop, stop_poll_loop
from apps.protocols.services import write_setpoint
from tests.conftest import free_port_in
from tests.protocols.test_modbus_pool import CountingServer, poll_now, polled_device

# Ports of this module's servers; other suites running beside it use other ranges.
PORTS = range(22300, 22330)


def port_in_range():
    return free_port_in(PORTS)


@pytest.fixture
def server():
    handle = CountingServer(port=port_in_range()).start()
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def no_poll_loop():
    """Start each test in a process without a poll loop, as the web process is, and stop any loop afterwards."""
    stop_poll_loop("test start")
    yield
    stop_poll_loop("test end")


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user("operator", password="Operator-password-4711", role=Role.OPERATOR)


def test_setpoint_in_worker_reuses_pooled_connection(alpha, server, operator):
    device = polled_device(server)
    point = device.points.get()
    assert poll_now(device).failed == 0

    result = write_setpoint(point, 42, actor=operator)

    assert result.read_back == 42
    assert poll_now(device).failed == 0
    assert server.opened == 1
    assert server.closed == 0
    assert poll_loop().pool.opened == 1


def test_connection_test_in_worker_reuses_pooled_connection(alpha, server):
    device = polled_device(server)
    assert poll_now(device).failed == 0

    result = check_connection(device)

    assert result.ok, result.message
    assert result.value == 3.0
    assert server.opened == 1
    assert server.closed == 0


def test_setpoint_in_worker_reconnects_after_restart(alpha, server, operator, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols")
    device = polled_device(server)
    point = device.points.get()
    assert poll_now(device).failed == 0
    server.stop()
    restarted = CountingServer(port=server.port).start()

    try:
        result = write_setpoint(point, 17, actor=operator)
    finally:
        restarted.stop()

    assert result.read_back == 17
    assert restarted.opened == 1


def test_setpoint_outside_worker_opens_own_connection(alpha, server, operator):
    device = polled_device(server)
    point = device.points.get()

    result = write_setpoint(point, 55, actor=operator)
    server.wait_for(lambda: server.closed == 1)

    assert result.read_back == 55
    assert server.opened == 1
    assert running_poll_loop() is None


def test_connection_test_outside_worker_closes_connection(alpha, server):
    device = polled_device(server)

    result = check_connection(device)
    server.wait_for(lambda: server.closed == 1)

    assert result.ok, result.message
    assert server.opened == 1
    assert running_poll_loop() is None
